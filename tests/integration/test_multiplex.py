"""``WS /ws``: one connection, many channels, on real instances with real clients.

Each test reads the frames as a browser page would: replies matched by their ``ref``, the
channels' frames (``message``, ``gap``, ``join``, ``leave``) kept in arrival order beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2 as httpx
import jwt
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.conftest import RelayFactory
from tests.support import Instance, close_code, publish_all, recv_json, timeout

pytestmark = [pytest.mark.redis, pytest.mark.processes]

EVENTS = frozenset({"message", "gap", "join", "leave"})
"""Frames of a subscription; every other frame the relay sends on ``/ws`` is a reply."""

SECRET = "a-test-secret-for-the-multiplexed-endpoint-at-least-32-bytes"


class Mux:
    """A ``/ws`` client: frames sent with a ref; replies found by it; channel frames in ``events``."""

    def __init__(self, ws: ClientConnection, client: str) -> None:
        self.ws = ws
        self.client = client
        self.events: list[dict[str, Any]] = []  # read, not yet taken by the test, in arrival order
        self._replies: dict[Any, dict[str, Any]] = {}  # read while waiting for another ref
        self._refs = itertools.count(1)

    async def send(self, frame: dict[str, Any]) -> Any:
        """Send ``frame`` (with a fresh ref unless it has one); its ref."""
        if "ref" not in frame:
            frame = {**frame, "ref": next(self._refs)}
        await self.ws.send(json.dumps(frame))
        return frame["ref"]

    async def _read(self) -> None:
        frame = json.loads(await self.ws.recv())
        if frame["type"] in EVENTS:
            self.events.append(frame)
        else:
            assert "ref" in frame, f"a reply without a ref: {frame}"
            assert frame["ref"] not in self._replies, f"two replies for one ref: {frame}"
            self._replies[frame["ref"]] = frame

    async def reply(self, ref: Any, within: float = 5) -> dict[str, Any]:
        """The reply to the frame sent with ``ref``."""
        async with asyncio.timeout(timeout(within)):
            while ref not in self._replies:
                await self._read()
        return self._replies.pop(ref)

    async def call(self, within: float = 5, **frame: Any) -> dict[str, Any]:
        return await self.reply(await self.send(frame), within)

    async def next_event(self, within: float = 5) -> dict[str, Any]:
        async with asyncio.timeout(timeout(within)):
            while not self.events:
                await self._read()
        return self.events.pop(0)

    async def messages(self, count: int, within: float = 10) -> list[dict[str, Any]]:
        """The next ``count`` channel frames, which must all be messages."""
        out = [await self.next_event(within) for _ in range(count)]
        assert all(m["type"] == "message" for m in out), [m for m in out if m["type"] != "message"]
        return out

    async def until_message(self, channel: str, within: float = 10) -> list[dict[str, Any]]:
        """Channel frames up to and with the first message of ``channel``."""
        out: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout(within)):
            while not out or out[-1]["type"] != "message" or out[-1]["channel"] != channel:
                out.append(await self.next_event(within))
        return out

    async def quiet(self, seconds: float = 0.3) -> None:
        """Nothing more arrives (no duplicate, nothing unasked for) within ``seconds``."""
        assert not self.events, self.events
        assert not self._replies, self._replies
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.ws.recv(), seconds)

    async def subscribe(self, *channels: str, **options: Any) -> list[dict[str, Any]]:
        """Subscribe to every channel (frames sent together); the ``subscribed`` replies."""
        refs = [await self.send({"type": "subscribe", "channel": c, **options}) for c in channels]
        replies = [await self.reply(ref) for ref in refs]
        assert [r["type"] for r in replies] == ["subscribed"] * len(channels), replies
        return replies

    async def publish(self, items: list[tuple[str, Any]], within: float = 20) -> list[str]:
        """Publish every ``(channel, data)`` without waiting, then read the acks; their ids."""
        refs = [await self.send({"type": "publish", "channel": c, "data": d}) for c, d in items]
        acks = [await self.reply(ref, within) for ref in refs]
        assert [a["type"] for a in acks] == ["ack"] * len(items), [a for a in acks if a["type"] != "ack"]
        assert [a["channel"] for a in acks] == [c for c, _ in items]
        return [a["id"] for a in acks]


@contextlib.asynccontextmanager
async def mux(instance: Instance, **kwargs: Any) -> AsyncIterator[Mux]:
    """A ``/ws`` connection whose ``connected`` frame has been read."""
    async with connect(f"{instance.ws}/ws", open_timeout=timeout(10), **kwargs) as ws:
        first = await recv_json(ws)
        assert first["type"] == "connected", first
        assert first["client"], first
        yield Mux(ws, first["client"])


def started(*instances: Instance) -> None:
    """Start the instances side by side (two cores: the start-ups overlap)."""
    for instance in instances:
        instance.start(ready=False)
    for instance in instances:
        instance.wait_ready()


def by_channel(frames: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for frame in frames:
        out.setdefault(frame["channel"], []).append(frame["id"])
    return out


def stream_of(client: redis.Redis, prefix: str, channel: str) -> list[str]:
    entries: Any = client.xrange(f"{prefix}:{{{channel}}}")
    return [str(entry_id) for entry_id, _ in entries]


def refused(reply: dict[str, Any], code: str, **named: Any) -> bool:
    """``reply`` is an error with ``code`` naming exactly what the frame named (ref, channel);
    ``...`` leaves a field unchecked."""
    assert reply["type"] == "error", reply
    assert reply["code"] == code, reply
    assert reply["detail"], reply
    for field in ("ref", "channel"):
        if named.get(field) is Ellipsis:
            continue
        if field in named:
            assert reply.get(field) == named[field], (field, reply)
        else:
            assert field not in reply, (field, reply)
    return True


# -- delivery ------------------------------------------------------------------------------------


async def test_one_socket_gets_every_channel_it_follows_from_another_instance(relay: RelayFactory) -> None:
    a, b = relay(), relay()
    started(a, b)
    channels = [f"room-{n}" for n in range(20)]
    async with mux(b) as reader, mux(a) as writer:
        await reader.subscribe(*channels)
        # rounds over every channel, with a channel nobody on B follows in between
        items = [(c, {"c": c, "n": n}) for n in range(10) for c in ["elsewhere", *channels]]
        ids = await writer.publish(items)
        expected: dict[str, list[str]] = {c: [] for c in channels}
        for (channel, _), entry_id in zip(items, ids, strict=True):
            if channel != "elsewhere":
                expected[channel].append(entry_id)

        got = await reader.messages(200, within=20)
        assert by_channel(got) == expected  # per channel: stream order, none missing, none twice
        data = {(m["channel"], m["id"]): m["data"] for m in got}  # ids are per stream: equal across channels
        assert {(c, i): d for (c, d), i in zip(items, ids, strict=True) if c != "elsewhere"} == data
        await reader.quiet()


async def test_resume_from_an_id_mid_stream_is_exact_while_live_messages_keep_coming(
    relay: RelayFactory,
) -> None:
    a = relay().start()
    backlog = await publish_all(f"{a.ws}/ws/producer/seam", [{"n": n} for n in range(2000)])
    middle = backlog[999]

    async def publish_live(producer: ClientConnection) -> list[str]:
        ids: list[str] = []
        for chunk in range(10):  # in chunks, so that they land all along the catch-up
            for n in range(30):
                await producer.send(json.dumps({"live": chunk * 30 + n}))
            ids += [(await recv_json(producer))["id"] for _ in range(30)]
        return ids

    async with (
        mux(a) as reader,
        connect(f"{a.ws}/ws/producer/seam", open_timeout=timeout(10)) as producer,
        asyncio.TaskGroup() as tasks,
    ):
        live = tasks.create_task(publish_live(producer))
        reply = await reader.call(type="subscribe", channel="seam", ref="seam", **{"from": middle})
        assert reply == {"type": "subscribed", "channel": "seam", "id": middle, "ref": "seam"}
        got = await reader.messages(1000 + 300, within=30)
        assert [m["id"] for m in got] == backlog[1000:] + await live
        await reader.quiet()


async def test_subscribed_reply_names_the_position_for_from_zero_and_latest(relay: RelayFactory) -> None:
    a = relay().start()
    ids = await publish_all(f"{a.ws}/ws/producer/pos", [1, 2, 3])
    async with mux(a) as m:
        everything = await m.call(type="subscribe", channel="pos", ref=1, **{"from": "0"})
        assert everything == {"type": "subscribed", "channel": "pos", "id": "0-0", "ref": 1}
        assert [x["id"] for x in await m.messages(3)] == ids  # no gap: nothing was trimmed
        await m.quiet()
    async with mux(a) as m:
        latest, empty = await m.subscribe("pos", "empty")  # from omitted: "$"
        assert latest["id"] == ids[-1]  # the last entry when subscribing
        assert empty["id"] == "0-0"  # an empty stream
        after = await m.publish([("pos", 4), ("empty", 5)])
        got = await m.messages(2)
        assert by_channel(got) == {"pos": [after[0]], "empty": [after[1]]}  # nothing from before
        await m.quiet()
    async with mux(a) as m:
        (first,) = await m.subscribe("empty-too", **{"from": "$"})
        assert first["id"] == "0-0"
    # a client that left before any message resumes from the subscribed id and misses nothing
    missed = await publish_all(f"{a.ws}/ws/producer/empty-too", [6])
    more = await publish_all(f"{a.ws}/ws/producer/pos", [7])
    async with mux(a) as m:
        await m.subscribe("empty-too", **{"from": first["id"]})
        await m.subscribe("pos", **{"from": latest["id"]})
        got = await m.messages(3)
        assert by_channel(got) == {"empty-too": missed, "pos": [after[0], *more]}
        await m.quiet()


async def test_no_frame_of_a_channel_follows_its_unsubscribed_reply(relay: RelayFactory) -> None:
    a = relay().start()
    async with mux(a) as m, connect(f"{a.ws}/ws/producer/u", open_timeout=timeout(10)) as producer:
        await m.subscribe("u", "marker")
        for n in range(500):  # pipelined: many in flight while the unsubscribe goes by
            await producer.send(json.dumps({"n": n}))
        first = await m.next_event()
        done = await m.call(type="unsubscribe", channel="u", ref="bye")
        assert done == {"type": "unsubscribed", "channel": "u", "ref": "bye"}
        seen = [first, *m.events]  # read before the reply: fine
        m.events.clear()
        acks = [(await recv_json(producer))["id"] for _ in range(500)]
        assert [f["id"] for f in seen] == acks[: len(seen)]

        await m.publish([("marker", "after u")])
        after = await m.until_message("marker")
        assert [(f["channel"], f["data"]) for f in after] == [("marker", "after u")]
        await m.quiet()

        # subscribing again works, and resumes exactly after the last message seen
        await m.subscribe("u", **{"from": seen[-1]["id"]})
        rest = await m.messages(500 - len(seen), within=20)
        assert [f["id"] for f in rest] == acks[len(seen) :]
        await m.quiet()


async def test_a_backlog_catching_up_does_not_hold_back_another_channels_live_messages(
    relay: RelayFactory,
) -> None:
    a = relay().start()
    pad = "x" * 200
    backlog = await publish_all(f"{a.ws}/ws/producer/big", [{"n": n, "pad": pad} for n in range(5000)], 60)
    async with mux(a) as m, connect(f"{a.ws}/ws/producer/live", open_timeout=timeout(10)) as producer:
        big = await m.send({"type": "subscribe", "channel": "big", "from": "0"})
        live = await m.send({"type": "subscribe", "channel": "live"})
        assert (await m.reply(big))["type"] == "subscribed"
        assert (await m.reply(live))["type"] == "subscribed"
        await producer.send(json.dumps("now"))
        live_id = (await recv_json(producer))["id"]

        got = await m.messages(5001, within=30)
        order = [(f["channel"], f["id"]) for f in got]
        assert [i for c, i in order if c == "big"] == backlog
        assert order.index(("live", live_id)) < len(order) - 1, "the live message came after the backlog"
        await m.quiet()


# -- refusals ------------------------------------------------------------------------------------


async def test_every_refusal_names_its_frame_and_leaves_the_connection_open(relay: RelayFactory) -> None:
    a = relay(max_subscriptions="3", max_message_bytes="1024").start()
    async with mux(a) as m:

        async def answer(text: str | bytes) -> dict[str, Any]:
            await m.ws.send(text)
            return await recv_json(m.ws)

        assert refused(await answer("not json"), "invalid_frame")
        assert refused(await answer("[1, 2]"), "invalid_frame")
        assert refused(await answer(b'{"type":"publish"}'), "invalid_frame")
        assert refused(await m.call(type="dance", ref=1), "invalid_frame", ref=1)
        assert refused(await m.call(ref="no type"), "invalid_frame", ref="no type")
        assert refused(await m.call(type="subscribe", ref=2), "invalid_frame", ref=2)
        assert refused(
            await m.call(type="publish", channel="c1", ref=3), "invalid_frame", ref=3, channel="c1"
        )
        for bad_ref in ({"a": 1}, [1], True, 1.5, "r" * 257, 2**60):
            reply = await answer(json.dumps({"type": "subscribe", "channel": "c1", "ref": bad_ref}))
            assert refused(reply, "invalid_frame", channel=...)  # no ref to repeat
        assert refused(
            await m.call(type="subscribe", channel="no spaces", ref=4),
            "invalid_channel",
            ref=4,
            channel="no spaces",
        )
        assert refused(
            await m.call(type="subscribe", channel="c1", ref=5, **{"from": "yesterday"}),
            "invalid_position",
            ref=5,
            channel="c1",
        )
        await m.subscribe("c1")
        assert refused(
            await m.call(type="subscribe", channel="c1", ref=6), "already_subscribed", ref=6, channel="c1"
        )
        assert refused(
            await m.call(type="unsubscribe", channel="c9", ref=7), "not_subscribed", ref=7, channel="c9"
        )
        await m.subscribe("c2", "c3")
        full = await m.call(type="subscribe", channel="c4", ref=8)
        assert refused(full, "too_many_subscriptions", ref=8, channel="c4")
        big = await m.call(type="publish", channel="c1", data="x" * 2000, ref=9)  # frame under 1024 + 4096
        assert refused(big, "too_large", ref=9, channel="c1")

        # still open, and the limit counts what is followed now
        assert (await m.call(type="unsubscribe", channel="c3"))["type"] == "unsubscribed"
        await m.subscribe("c4")
        (entry_id,) = await m.publish([("c1", "x" * 1000)])
        assert [f["id"] for f in await m.messages(1)] == [entry_id]
        await m.quiet()


async def test_a_frame_too_big_to_be_a_message_closes_with_1009(relay: RelayFactory) -> None:
    a = relay(max_message_bytes="1024").start()
    async with mux(a) as m:
        await m.send({"type": "publish", "channel": "c", "data": "x" * (1024 + 4096)})
        assert await close_code(m.ws) == 1009


async def test_more_than_32_refusals_within_10_s_close_with_1008(relay: RelayFactory) -> None:
    a = relay().start()
    async with mux(a) as m:
        for n in range(32):
            assert refused(await m.call(type="nope", ref=n), "invalid_frame", ref=n)
        (entry_id,) = await m.publish([("c", "fine")])  # accepted frames are no refusals
        assert entry_id
        await m.send({"type": "nope"})
        assert await close_code(m.ws) == 1008


# -- tokens --------------------------------------------------------------------------------------


def token(lifetime: float = 300, **claims: Any) -> str:
    return jwt.encode({"exp": time.time() + lifetime, **claims}, SECRET, algorithm="HS256")


def bearer(jwt_text: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {jwt_text}"}}


async def test_no_token_is_refused_at_the_handshake(relay: RelayFactory) -> None:
    a = relay(jwt_secret=SECRET).start()
    for url in (f"{a.ws}/ws", f"{a.ws}/ws?token=not.a.jwt", f"{a.ws}/ws?token={token(-10, subscribe=['*'])}"):
        with pytest.raises(InvalidStatus) as denied:
            async with connect(url, open_timeout=timeout(5)):
                pass
        assert denied.value.response.status_code == 401, url


async def test_a_token_allows_each_action_only_on_its_channels(relay: RelayFactory) -> None:
    a = relay(jwt_secret=SECRET).start()
    async with mux(a, **bearer(token(subscribe=["news:*"], publish=["chat"]))) as m:
        denied = await m.call(type="subscribe", channel="other", ref="s")
        assert refused(denied, "forbidden", ref="s", channel="other")
        denied = await m.call(type="publish", channel="news:1", data=1, ref="p")
        assert refused(denied, "forbidden", ref="p", channel="news:1")
        denied = await m.call(type="presence", channel="chat", ref="w")  # presence needs subscribe
        assert refused(denied, "forbidden", ref="w", channel="chat")
        await m.subscribe("news:1")
        (entry_id,) = await m.publish([("chat", "hello")])
        assert entry_id
        await m.quiet()


async def test_a_refresh_with_a_bad_token_is_refused_and_the_old_one_kept(relay: RelayFactory) -> None:
    a = relay(jwt_secret=SECRET).start()
    async with mux(a, **bearer(token(subscribe=["news:*"], publish=["chat"]))) as m:
        forged = jwt.encode({"exp": time.time() + 300, "subscribe": ["*"]}, SECRET[::-1], algorithm="HS256")
        for bad in (forged, token(-10, subscribe=["*"]), "not.a.jwt"):
            assert refused(await m.call(type="refresh", token=bad, ref="r"), "invalid_token", ref="r")
        assert refused(
            await m.call(type="subscribe", channel="other", ref=1), "forbidden", ref=1, channel="other"
        )
        await m.subscribe("news:2")
        assert (await m.publish([("chat", "still here")]))[0]
        await m.quiet()


async def test_a_refresh_may_not_change_the_user_nor_drop_a_channel_followed(relay: RelayFactory) -> None:
    """A refreshed token must name the same user (presence shows it) and cover every channel the
    connection follows: otherwise it is refused and the old one kept, so that revoking a channel
    cannot be dodged by refreshing on a connection that follows it."""
    a = relay(jwt_secret=SECRET).start()
    async with mux(a, **bearer(token(sub="ann", subscribe=["news:*", "chat"]))) as m:
        await m.subscribe("news:1")
        other_user = token(sub="bob", subscribe=["*"])
        assert refused(await m.call(type="refresh", token=other_user, ref="u"), "invalid_token", ref="u")
        narrower = token(sub="ann", subscribe=["chat"])
        reply = await m.call(type="refresh", token=narrower, ref="n")
        assert refused(reply, "forbidden", ref="n", channel="news:1")
        await m.call(type="unsubscribe", channel="news:1", ref="x")
        assert await m.call(type="refresh", token=narrower, ref="n2") == {"type": "refreshed", "ref": "n2"}
        assert refused(
            await m.call(type="subscribe", channel="news:2", ref=2), "forbidden", ref=2, channel="news:2"
        )


async def test_a_refreshed_token_keeps_the_connection_past_the_old_expiry(relay: RelayFactory) -> None:
    a = relay(jwt_secret=SECRET).start()
    short = time.time() + 2
    first = jwt.encode({"exp": short, "subscribe": ["news:*"]}, SECRET, algorithm="HS256")
    async with mux(a, **bearer(first)) as m:
        reply = await m.call(type="refresh", token=token(60, subscribe=["*"], publish=["*"]), ref="r")
        assert reply == {"type": "refreshed", "ref": "r"}
        with pytest.raises(TimeoutError):  # neither a frame nor a close, past the first token's exp
            await asyncio.wait_for(m.ws.recv(), short - time.time() + 1)
        await m.subscribe("other")  # and the new token's grant applies
        (entry_id,) = await m.publish([("other", "after the old exp")])
        assert [f["id"] for f in await m.messages(1)] == [entry_id]


async def test_a_connection_whose_token_expires_is_closed_with_4401(relay: RelayFactory) -> None:
    a = relay(jwt_secret=SECRET).start()
    expires = time.time() + 1.5
    async with mux(a, **bearer(jwt.encode({"exp": expires, "subscribe": ["*"]}, SECRET, "HS256"))) as m:
        await m.subscribe("news")
        assert await close_code(m.ws, within=5) == 4401
        assert time.time() >= expires - 0.2


# -- cost and publishing -------------------------------------------------------------------------


def relay_connections(client: redis.Redis, instance: Instance) -> int:
    name = instance.env["RELAY_INSTANCE_NAME"]
    return sum(1 for c in client.client_list() if c.get("name", "").startswith(f"relay:{name}:"))


async def test_redis_connections_do_not_grow_with_sockets_or_subscriptions(
    relay: RelayFactory, redis_client: redis.Redis
) -> None:
    a = relay().start()
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(mux(a))
        # one connection doing everything once: subscribe, publish, receive, presence, history
        await first.subscribe(*[f"ch-{n}" for n in range(20)])
        await first.publish([(f"ch-{n}", n) for n in range(20)])
        await first.messages(20)
        assert (await first.call(type="presence", channel="ch-0"))["type"] == "presence"
        await first.subscribe("ch-100", **{"from": "0"})
        async with httpx.AsyncClient(base_url=a.http, timeout=timeout(5)) as http:
            assert (await http.get("/channels/ch-0/messages?from=0")).status_code == 200
        with_one = relay_connections(redis_client, a)
        assert with_one <= 5  # documented: 1 publishing, up to 3 reading, 1 Pub/Sub

        async def open_one(n: int) -> Mux:
            m = await stack.enter_async_context(mux(a))
            await m.subscribe(*[f"ch-{(n * 20 + k) % 200}" for k in range(20)])
            return m

        crowd = await asyncio.gather(*(open_one(n) for n in range(1, 50)))  # 50 sockets, 1,000 subscriptions
        await first.publish([(f"ch-{n}", {"to": n}) for n in range(200)])
        for n, m in enumerate(crowd, start=1):
            got = await m.messages(20)
            assert sorted(f["data"]["to"] for f in got) == sorted((n * 20 + k) % 200 for k in range(20))
        assert relay_connections(redis_client, a) == with_one


async def test_publish_acks_come_in_frame_order_with_their_refs(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay().start()
    channels = ["p0", "p1", "p2", "p3", "p4"]
    refs: list[Any] = [n if n % 2 else f"ref-{n}" for n in range(200)]
    async with mux(a) as m:
        for ref in refs:
            await m.send(
                {"type": "publish", "channel": channels[hash(str(ref)) % 5], "data": {"r": ref}, "ref": ref}
            )
        acks = [await recv_json(m.ws) for _ in refs]  # not matched by ref: read as they come
        assert [ack["ref"] for ack in acks] == refs
        assert all(ack["type"] == "ack" for ack in acks), acks
        for channel in channels:
            ids = [ack["id"] for ack in acks if ack["channel"] == channel]
            assert stream_of(redis_client, prefix, channel) == ids  # one entry each, in frame order
        await m.quiet()


async def test_an_idempotency_key_is_one_namespace_for_http_and_ws(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay().start()
    async with mux(a) as m, httpx.AsyncClient(base_url=a.http, timeout=timeout(5)) as http:
        posted = await http.post(
            "/channels/pay/messages", json={"amount": 5}, headers={"Idempotency-Key": "K"}
        )
        assert posted.status_code == 201
        again = await m.call(type="publish", channel="pay", data={"amount": 5}, key="K", ref="again")
        assert again == {"type": "ack", "channel": "pay", "id": posted.json()["id"], "ref": "again"}
        assert stream_of(redis_client, prefix, "pay") == [posted.json()["id"]]

        # the other way round, and a repeat over /ws
        first = await m.call(type="publish", channel="pay2", data=1, key="K2")
        twice = await m.call(type="publish", channel="pay2", data=1, key="K2")
        posted = await http.post("/channels/pay2/messages", json=1, headers={"Idempotency-Key": "K2"})
        assert first["id"] == twice["id"] == posted.json()["id"]
        assert stream_of(redis_client, prefix, "pay2") == [first["id"]]

        # one namespace per channel: the same key elsewhere is another message
        other = await m.call(type="publish", channel="pay3", data={"amount": 5}, key="K")
        assert other["type"] == "ack", other
        assert other["id"] != posted.json()["id"]
        assert stream_of(redis_client, prefix, "pay3") == [other["id"]]
