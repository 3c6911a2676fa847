"""The /ws client (app.client.Relay) against a fake relay in the test's own event loop.

The fake speaks the frames of the contract ("One connection, many channels", "Presence") over a
real WebSocket on 127.0.0.1 and lets a test drop connections, refuse handshakes, hold replies,
refuse frames and go silent, so that recovery is tested without a Redis or an instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from app.client import ClientError, Gap, Join, Leave, Message, Refused, Relay, Subscription, commands
from app.client.multiplex import Event
from tests.support import timeout

FAST = 0.05  # max_backoff: reconnect at once


def number(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


@dataclass(eq=False)
class Conn:
    ws: ServerConnection
    client: str
    subs: dict[str, bool] = field(default_factory=dict)  # channel -> presence

    @property
    def entry(self) -> dict[str, Any]:
        return {"client": self.client, "user": None, "info": None}


class FakeRelay:
    """A ``/ws`` endpoint with streams in memory (ids ``<n>-0``, one counter for all channels)."""

    def __init__(self) -> None:
        self.url = ""
        self.streams: dict[str, list[tuple[str, Any]]] = {}
        self.trimmed: dict[str, str] = {}  # channel -> the last id removed by "retention"
        self.keys: dict[tuple[str, str], str] = {}
        self.conns: list[Conn] = []
        self.frames: list[dict[str, Any]] = []  # every client frame, in arrival order
        self.accepted = 0
        self.refused = 0  # handshakes refused with refuse_status
        self.refuse_status: int | None = None  # answer every handshake with this status
        self.refusals: dict[tuple[str, str], str] = {}  # (type, channel) -> error code
        self.unavailable: dict[tuple[str, str], int] = {}  # (type, channel) -> times left
        self.drop_before_ack = False  # store the next publish, then cut the connection
        self.overlap = 0  # a subscribe from an id also sends this many messages up to it
        self.backlog = True  # False: a subscribe sends no stored message (as if still catching up)
        self.held: list[tuple[Conn, dict[str, Any]]] | None = None  # replies kept back when a list
        self._seq = 0
        self._changed = asyncio.Event()
        self._order = asyncio.Lock()  # a subscription's backlog goes out before live messages

    # -- what a test drives -----------------------------------------------------------------------

    async def until(self, check: Callable[[], bool], within: float = 5) -> None:
        """Wait until ``check()`` holds; it is tried after every frame and connection change."""
        async with asyncio.timeout(timeout(within)):
            while not check():
                self._changed.clear()
                await self._changed.wait()

    def sent(self, kind: str, channel: str | None = None) -> list[dict[str, Any]]:
        """The client frames of ``kind`` (on ``channel``) received so far."""
        return [f for f in self.frames if f.get("type") == kind and channel in (None, f.get("channel"))]

    async def append(self, channel: str, data: Any) -> str:
        """Store a message (as if another producer had) and send it to its subscribers."""
        self._seq += 1
        entry_id = f"{self._seq}-0"
        self.streams.setdefault(channel, []).append((entry_id, data))
        frame = {"type": "message", "channel": channel, "id": entry_id, "data": data}
        async with self._order:
            for conn in [c for c in self.conns if channel in c.subs]:
                await self._send(conn, frame)
        return entry_id

    def trim(self, channel: str, keep: int) -> None:
        entries = self.streams[channel]
        self.trimmed[channel] = entries[-keep - 1][0]
        del entries[:-keep]

    def drop(self) -> None:
        """Cut every connection without a close frame (the client sees 1006)."""
        for conn in self.conns:
            conn.ws.transport.abort()

    async def close_all(self, code: int) -> None:
        for conn in list(self.conns):
            await conn.ws.close(code, "test")

    def silence(self) -> None:
        """Stop reading every connection: no frame is answered, not even a ping."""
        for conn in self.conns:
            conn.ws.transport.pause_reading()

    def wake(self) -> None:
        """Read every connection again (a silenced one then sees that its client went away)."""
        for conn in self.conns:
            conn.ws.transport.resume_reading()

    async def release(self) -> None:
        """Send the replies held back, last first."""
        held, self.held = self.held or [], None
        for conn, frame in reversed(held):
            await self._send(conn, frame)

    # -- the server -------------------------------------------------------------------------------

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path != "/ws":
            return connection.respond(HTTPStatus.NOT_FOUND, "not here\n")
        if self.refuse_status is not None:
            self.refused += 1
            self._changed.set()
            body = json.dumps({"code": "refused", "detail": "by the test"})
            return connection.respond(HTTPStatus(self.refuse_status), body)
        return None

    async def handler(self, ws: ServerConnection) -> None:
        self.accepted += 1
        conn = Conn(ws, f"conn-{self.accepted}")
        self.conns.append(conn)
        self._changed.set()
        try:
            await ws.send(json.dumps({"type": "connected", "client": conn.client}))
            async for raw in ws:
                frame = json.loads(raw)
                await self._answer(conn, frame)
                self.frames.append(frame)  # once answered: a test that waits for it sees the answer
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.conns.remove(conn)
            for channel in conn.subs:
                await self._announce("leave", conn, channel)
            self._changed.set()

    async def _send(self, conn: Conn, frame: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await conn.ws.send(json.dumps(frame))

    async def _reply(self, conn: Conn, frame: dict[str, Any], request: dict[str, Any]) -> None:
        if "ref" in request:
            frame["ref"] = request["ref"]
        if self.held is not None and frame["type"] != "subscribed":
            self.held.append((conn, frame))
        else:
            await self._send(conn, frame)

    async def _refuse(self, conn: Conn, request: dict[str, Any]) -> bool:
        """Answer with an error when the test said so; whether it did."""
        key = (request["type"], request.get("channel", ""))
        code = self.refusals.get(key)
        if self.unavailable.get(key, 0) > 0:
            self.unavailable[key] -= 1
            code = "unavailable"
        if code is None:
            return False
        error = {"type": "error", "code": code, "detail": "refused by the test"}
        if "channel" in request:
            error["channel"] = request["channel"]
        await self._reply(conn, error, request)
        return True

    async def _answer(self, conn: Conn, frame: dict[str, Any]) -> None:
        if await self._refuse(conn, frame):
            return
        answers = {
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "publish": self._publish,
            "presence": self._presence,
            "refresh": self._refresh,
        }
        answer = answers.get(frame["type"])
        if answer is None:
            await self._reply(conn, {"type": "error", "code": "invalid_frame", "detail": "?"}, frame)
        else:
            await answer(conn, frame)

    async def _subscribe(self, conn: Conn, frame: dict[str, Any]) -> None:
        channel = frame["channel"]
        if channel in conn.subs:
            error = {"type": "error", "code": "already_subscribed", "detail": "", "channel": channel}
            await self._reply(conn, error, frame)
            return
        async with self._order:
            await self._start(conn, frame)
        await self._announce("join", conn, channel)

    async def _start(self, conn: Conn, frame: dict[str, Any]) -> None:
        channel, start = frame["channel"], frame.get("from", "$")
        entries = self.streams.setdefault(channel, [])
        if start == "$":
            position, backlog = (entries[-1][0] if entries else "0-0"), []
        else:
            position = "0-0" if start == "0" else start
            backlog = [e for e in entries if number(e[0]) > number(position)]
            if self.overlap and start != "0":
                backlog = [e for e in entries if number(e[0]) <= number(position)][-self.overlap :] + backlog
            if not self.backlog:
                backlog = []
        await self._reply(conn, {"type": "subscribed", "channel": channel, "id": position}, frame)
        if start != "0" and channel in self.trimmed and number(position) < number(self.trimmed[channel]):
            gap = {"type": "gap", "channel": channel, "from": position, "next": entries[0][0]}
            await self._send(conn, gap)
        for entry_id, data in backlog:
            await self._send(conn, {"type": "message", "channel": channel, "id": entry_id, "data": data})
        conn.subs[channel] = bool(frame.get("presence"))

    async def _announce(self, kind: str, conn: Conn, channel: str) -> None:
        for other in self.conns:
            if other is not conn and other.subs.get(channel):
                await self._send(other, {"type": kind, "channel": channel, "client": conn.entry})

    async def _unsubscribe(self, conn: Conn, frame: dict[str, Any]) -> None:
        channel = frame["channel"]
        if conn.subs.pop(channel, None) is None:
            error = {"type": "error", "code": "not_subscribed", "detail": "", "channel": channel}
            await self._reply(conn, error, frame)
            return
        await self._reply(conn, {"type": "unsubscribed", "channel": channel}, frame)
        await self._announce("leave", conn, channel)

    async def _publish(self, conn: Conn, frame: dict[str, Any]) -> None:
        channel, key = frame["channel"], frame.get("key")
        entry_id = self.keys.get((channel, key)) if key is not None else None
        if entry_id is None:
            entry_id = await self.append(channel, frame["data"])
            if key is not None:
                self.keys[(channel, key)] = entry_id
        if self.drop_before_ack:
            self.drop_before_ack = False
            conn.ws.transport.abort()
            return
        await self._reply(conn, {"type": "ack", "channel": channel, "id": entry_id}, frame)

    async def _presence(self, conn: Conn, frame: dict[str, Any]) -> None:
        channel = frame["channel"]
        clients = [c.entry for c in self.conns if channel in c.subs]
        await self._reply(conn, {"type": "presence", "channel": channel, "clients": clients}, frame)

    async def _refresh(self, conn: Conn, frame: dict[str, Any]) -> None:
        if frame["token"] == "bad":
            await self._reply(conn, {"type": "error", "code": "invalid_token", "detail": "no"}, frame)
        else:
            await self._reply(conn, {"type": "refreshed"}, frame)


@pytest.fixture
async def fake() -> AsyncIterator[FakeRelay]:
    relay = FakeRelay()
    async with serve(relay.handler, "127.0.0.1", 0, process_request=relay.process_request) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        relay.url = f"http://127.0.0.1:{port}"
        yield relay
        relay.wake()


async def take(sub: Subscription, count: int, within: float = 5) -> list[Event]:
    """The next ``count`` events of ``sub``."""
    out: list[Event] = []
    async with asyncio.timeout(timeout(within)):
        while len(out) < count:
            out.append(await anext(sub))
    return out


def ids(events: list[Event]) -> list[str]:
    return [e.id for e in events if isinstance(e, Message)]


# -- replies ----------------------------------------------------------------------------------------


async def test_replies_are_matched_by_ref_whatever_their_order(fake: FakeRelay) -> None:
    async with Relay(fake.url, max_backoff=FAST) as relay:
        await relay.subscribe("a")
        await relay.subscribe("b")
        fake.held = []  # every reply from now on comes back in reverse order
        calls = asyncio.gather(
            relay.presence("a"), relay.publish("a", {"n": 1}), relay.publish("b", [2]), relay.presence("c")
        )
        await fake.until(lambda: fake.held is not None and len(fake.held) == 4)
        await fake.release()
        present_a, id_a, id_b, present_c = await asyncio.wait_for(calls, timeout(5))
    assert present_a == [{"client": relay.client_id, "user": None, "info": None}]
    assert present_c == []
    assert fake.streams["a"] == [(id_a, {"n": 1})]
    assert fake.streams["b"] == [(id_b, [2])]
    refs = [frame["ref"] for frame in fake.frames]
    assert all(isinstance(ref, int) for ref in refs)
    assert refs == sorted(set(refs))  # increasing, one per frame


async def test_the_client_id_comes_from_the_connected_frame(fake: FakeRelay) -> None:
    async with Relay(fake.url) as relay:
        assert await asyncio.wait_for(relay.connected(), timeout(5)) == "conn-1"
        assert relay.client_id == "conn-1"


# -- resume ------------------------------------------------------------------------------------------


async def test_after_a_drop_every_subscription_resumes_from_its_position(fake: FakeRelay) -> None:
    before = [await fake.append("b", n) for n in range(3)]
    async with Relay(fake.url, max_backoff=FAST) as relay:
        a = await relay.subscribe("a")  # from now
        b = await relay.subscribe("b", from_="0")  # everything retained
        quiet = await relay.subscribe("quiet")  # nothing arrives before the drop
        first_a = [await fake.append("a", n) for n in range(3)]
        got_a = await take(a, 2)  # the third is held by the client, not yet taken
        got_b = await take(b, 3)
        await relay.presence("a")  # its reply follows the third message: the client has that too
        fake.drop()
        await fake.until(lambda: len(fake.sent("subscribe")) == 6)
        later_a = [await fake.append("a", n) for n in range(3, 5)]
        later_quiet = [await fake.append("quiet", n) for n in range(2)]
        got_a += await take(a, 3)
        got_b_later = [await fake.append("b", 9)]
        got_b += await take(b, 1)
        got_quiet = await take(quiet, 2)
        assert relay.reconnects == 1
    assert ids(got_a) == first_a + later_a
    assert ids(got_b) == before + got_b_later
    assert ids(got_quiet) == later_quiet
    resubscribed = {f["channel"]: f for f in fake.sent("subscribe")[3:]}
    assert resubscribed["a"]["from"] == first_a[-1]  # the last received, though not taken then
    assert resubscribed["b"]["from"] == before[-1]
    assert resubscribed["quiet"]["from"] == "0-0"  # the position it was subscribed at
    assert a.position == later_a[-1]


async def test_a_resubscription_that_repeats_messages_delivers_each_once(fake: FakeRelay) -> None:
    async with Relay(fake.url, max_backoff=FAST) as relay:
        sub = await relay.subscribe("a", from_="0")
        sent = [await fake.append("a", n) for n in range(4)]
        got = await take(sub, 4)
        fake.overlap = 3  # the next subscribe also sends the 3 messages up to its from
        await fake.close_all(1012)
        sent += [await fake.append("a", 4)]
        got += await take(sub, 1)
        await fake.until(lambda: len(fake.sent("subscribe")) == 2)
        sent += [await fake.append("a", 5)]
        got += await take(sub, 1)
    assert ids(got) == sent


async def test_a_gap_names_its_channel_and_is_not_repeated_after_a_drop(fake: FakeRelay) -> None:
    written = [await fake.append("a", n) for n in range(10)]
    fake.trim("a", keep=3)
    async with Relay(fake.url, max_backoff=FAST) as relay:
        fake.backlog = False  # the gap, then nothing yet
        sub = await relay.subscribe("a", from_=written[1])
        assert await take(sub, 1) == [Gap(written[1], written[7], "a")]
        fake.backlog = True
        fake.drop()  # before any message: subscribed again from the same id, told the same gap
        await fake.until(lambda: len(fake.sent("subscribe")) == 2)
        got = await take(sub, 3)
    assert fake.sent("subscribe")[1]["from"] == written[1]
    assert ids(got) == written[7:]  # the same gap is not told twice


async def test_calls_made_while_the_relay_refuses_connections_wait_and_go_through(fake: FakeRelay) -> None:
    fake.refuse_status = 503
    async with Relay(fake.url, max_backoff=FAST) as relay:
        publishing = asyncio.ensure_future(relay.publish("a", "while refused"))
        subscribing = asyncio.ensure_future(relay.subscribe("a", from_="0"))
        await fake.until(lambda: fake.refused >= 3)
        assert not publishing.done()
        assert not subscribing.done()
        fake.refuse_status = None
        entry_id = await asyncio.wait_for(publishing, timeout(5))
        sub = await asyncio.wait_for(subscribing, timeout(5))
        assert ids(await take(sub, 1)) == [entry_id]
        assert relay.reconnects >= 1


# -- exactly once ------------------------------------------------------------------------------------


async def test_a_publish_whose_ack_was_lost_is_sent_again_with_the_same_key(fake: FakeRelay) -> None:
    async with Relay(fake.url, max_backoff=FAST) as relay:
        await relay.connected()
        fake.drop_before_ack = True  # stored, then the connection is cut before the ack
        entry_id = await asyncio.wait_for(relay.publish("a", {"once": True}), timeout(5))
        other = await asyncio.wait_for(relay.publish("a", {"once": False}), timeout(5))
    first, again, second = fake.sent("publish")
    assert first["key"] == again["key"] != second["key"]
    assert first["ref"] != again["ref"]
    assert fake.streams["a"] == [(entry_id, {"once": True}), (other, {"once": False})]
    assert relay.reconnects == 1


async def test_unavailable_means_try_again_later_with_the_same_key(fake: FakeRelay) -> None:
    fake.unavailable[("publish", "a")] = 2
    fake.unavailable[("subscribe", "a")] = 1
    async with Relay(fake.url, max_backoff=FAST) as relay:
        sub = await asyncio.wait_for(relay.subscribe("a"), timeout(5))
        entry_id = await asyncio.wait_for(relay.publish("a", 1), timeout(5))
        assert ids(await take(sub, 1)) == [entry_id]
    assert len({frame["key"] for frame in fake.sent("publish")}) == 1
    assert len(fake.sent("publish")) == 3
    assert len(fake.sent("subscribe")) == 2
    assert relay.reconnects == 0  # on the same connection


# -- refusals ---------------------------------------------------------------------------------------


async def test_an_error_reply_raises_from_the_call_and_the_connection_goes_on(fake: FakeRelay) -> None:
    fake.refusals[("subscribe", "secret")] = "forbidden"
    fake.refusals[("publish", "big")] = "too_large"
    fake.refusals[("presence", "secret")] = "forbidden"
    async with Relay(fake.url, max_backoff=FAST) as relay:
        with pytest.raises(Refused) as refused:
            await asyncio.wait_for(relay.subscribe("secret"), timeout(5))
        assert (refused.value.code, refused.value.channel) == ("forbidden", "secret")
        with pytest.raises(Refused, match="too_large"):
            await asyncio.wait_for(relay.publish("big", "x"), timeout(5))
        with pytest.raises(Refused, match="forbidden"):
            await asyncio.wait_for(relay.presence("secret"), timeout(5))
        with pytest.raises(Refused, match="invalid_token"):
            await asyncio.wait_for(relay.refresh("bad"), timeout(5))
        await asyncio.wait_for(relay.refresh("good"), timeout(5))
        sub = await asyncio.wait_for(relay.subscribe("open"), timeout(5))
        entry_id = await asyncio.wait_for(relay.publish("open", 1), timeout(5))
        assert ids(await take(sub, 1)) == [entry_id]
        with pytest.raises(ClientError, match="one subscription per channel"):
            await relay.subscribe("open")
    assert fake.accepted == 1


async def test_a_handshake_refused_for_good_ends_the_client(fake: FakeRelay) -> None:
    fake.refuse_status = 401
    async with Relay(fake.url, max_backoff=FAST) as relay:
        with pytest.raises(ClientError, match="401"):
            await asyncio.wait_for(relay.subscribe("a"), timeout(5))
        with pytest.raises(ClientError, match="401"):
            await relay.publish("a", 1)  # ended: at once


async def test_a_policy_close_ends_the_subscriptions_with_an_error(fake: FakeRelay) -> None:
    async with Relay(fake.url, max_backoff=FAST) as relay:
        sub = await relay.subscribe("a")
        entry_id = await fake.append("a", 1)
        await fake.until(lambda: len(fake.streams["a"]) == 1)
        await fake.close_all(1008)
        assert ids(await take(sub, 1)) == [entry_id]  # what was received first
        with pytest.raises(ClientError, match="1008"):
            await take(sub, 1)


async def test_the_client_needs_async_with() -> None:
    with pytest.raises(ClientError, match="async with"):
        await Relay("http://127.0.0.1:9").publish("a", 1)


# -- unsubscribe and presence ------------------------------------------------------------------------


async def test_unsubscribe_ends_the_iteration_and_nothing_of_the_channel_follows(fake: FakeRelay) -> None:
    async with Relay(fake.url, max_backoff=FAST) as relay:
        a = await relay.subscribe("a")
        b = await relay.subscribe("b")
        first = await fake.append("a", 1)
        await a.unsubscribe()
        assert fake.conns[0].subs.keys() == {"b"}
        await fake.append("a", 2)
        await fake.append("b", 3)
        assert [e.data for e in await take(b, 1) if isinstance(e, Message)] == [3]
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(a), timeout(5))
        assert await relay.presence("a") == []
        again = await relay.subscribe("a", from_=first)  # resume after what was taken
        assert [e.data for e in await take(again, 1) if isinstance(e, Message)] == [2]
        fake.drop()
        await fake.until(lambda: len(fake.sent("subscribe")) == 5)
    resubscribed = {f["channel"] for f in fake.sent("subscribe")[3:]}
    assert resubscribed == {"a", "b"}


async def test_presence_and_its_join_and_leave_events(fake: FakeRelay) -> None:
    async with Relay(fake.url, max_backoff=FAST) as watcher:
        events = await watcher.subscribe("room", presence=True)
        async with Relay(fake.url, max_backoff=FAST) as visitor:
            await visitor.subscribe("room")
            visitor_id = visitor.client_id
            assert visitor_id is not None
            present = await watcher.presence("room")
            assert {c["client"] for c in present} == {watcher.client_id, visitor_id}
        got = await take(events, 2)
    assert got == [Join("room", visitor_id), Leave("room", visitor_id)]


# -- flow ---------------------------------------------------------------------------------------------


async def test_a_full_subscription_stops_the_reading_until_the_caller_takes_one(fake: FakeRelay) -> None:
    async with Relay(fake.url, max_backoff=FAST, buffer=2) as relay:
        sub = await relay.subscribe("a")
        sent = [await fake.append("a", n) for n in range(5)]
        asking = asyncio.ensure_future(relay.presence("a"))
        done, _ = await asyncio.wait([asking], timeout=0.3)
        assert not done  # its reply is behind messages the client does not read yet
        got = await take(sub, 5)
        assert await asyncio.wait_for(asking, timeout(5)) != []
    assert ids(got) == sent


async def test_a_relay_gone_silent_is_given_up_on_and_the_subscriptions_go_on(fake: FakeRelay) -> None:
    async with Relay(fake.url, max_backoff=FAST, keepalive=0.6) as relay:
        sub = await relay.subscribe("a")
        fake.silence()
        await fake.until(lambda: fake.accepted == 2, within=5)
        await fake.until(lambda: len(fake.sent("subscribe")) == 2)
        entry_id = await fake.append("a", 1)
        assert ids(await take(sub, 1)) == [entry_id]
        assert relay.reconnects == 1


async def test_closing_ends_every_subscription_and_waiting_call(fake: FakeRelay) -> None:
    fake.held = []
    async with Relay(fake.url, max_backoff=FAST) as relay:
        sub = await relay.subscribe("a")
        waiting = asyncio.ensure_future(relay.presence("a"))
        await fake.until(lambda: fake.held is not None and len(fake.held) == 1)
    with pytest.raises(StopAsyncIteration):
        await anext(sub)
    with pytest.raises(ClientError, match="closed"):
        await waiting


# -- relay tail A B ------------------------------------------------------------------------------------


async def test_tail_of_several_channels_prints_each_event_with_its_channel(
    fake: FakeRelay, capsys: pytest.CaptureFixture[str]
) -> None:
    a = [await fake.append("a", n) for n in range(1, 5)]
    b = [await fake.append("b", n) for n in range(5, 9)]
    fake.trim("b", keep=2)
    status = await asyncio.wait_for(commands.tail_many(fake.url, ["a", "b"], a[0], 5, 5.0, None), timeout(10))
    assert status == commands.OK
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line for line in lines if line["channel"] == "a"] == [
        {"id": entry_id, "channel": "a", "data": n} for entry_id, n in zip(a[1:], range(2, 5), strict=True)
    ]
    assert [line for line in lines if line["channel"] == "b"] == [
        {"channel": "b", "gap": {"from": a[0], "next": b[2]}},
        {"id": b[2], "channel": "b", "data": 7},
        {"id": b[3], "channel": "b", "data": 8},
    ]
    assert fake.accepted == 1  # one socket for both


async def test_tail_of_several_channels_exits_2_when_refused_and_3_when_unreachable(
    fake: FakeRelay, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.refusals[("subscribe", "b")] = "forbidden"
    status = await asyncio.wait_for(commands.tail_many(fake.url, ["a", "b"], None, 1, 5.0, None), timeout(10))
    assert status == commands.REFUSED
    assert "forbidden" in capsys.readouterr().err
    fake.refuse_status = 503
    status = await asyncio.wait_for(commands.tail_many(fake.url, ["a", "b"], None, 1, 0.3, None), timeout(10))
    assert status == commands.UNREACHABLE
    assert "no connection" in capsys.readouterr().err
