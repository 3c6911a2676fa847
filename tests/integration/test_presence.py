"""Presence on real instances: who is on a channel, on every instance; joins, leaves, deaths, drains."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from typing import Any

import httpx2 as httpx
import jwt
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import RelayFactory
from tests.support import Instance, RedisServer, close_code, eventually, recv_json, timeout

pytestmark = [pytest.mark.redis, pytest.mark.processes]

SECRET = "a-presence-test-secret-long-enough-for-hs256-and-then-some"
CHANNEL = "room"


def started(*instances: Instance) -> tuple[Instance, ...]:
    """Start the instances side by side (start-up is most of these tests' time), then wait."""
    for instance in instances:
        instance.start(ready=False)
    for instance in instances:
        instance.wait_ready()
    return instances


def token(user: str, info: Any) -> str:
    claims = {"sub": user, "info": info, "subscribe": [CHANNEL], "exp": time.time() + 300}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def entry(client: str, user: Any = None, info: Any = None) -> dict[str, Any]:
    return {"client": client, "user": user, "info": info}


def frame(kind: str, client: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "channel": CHANNEL, "client": client}


def bearer(jwt_text: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt_text}"} if jwt_text else {}


async def connected(
    stack: contextlib.AsyncExitStack, instance: Instance, jwt_text: str | None = None
) -> tuple[ClientConnection, str]:
    """A ``/ws`` connection (closed with the stack) and its id from the ``connected`` frame."""
    ws = await stack.enter_async_context(
        connect(f"{instance.ws}/ws", open_timeout=timeout(10), additional_headers=bearer(jwt_text))
    )
    first = await recv_json(ws)
    assert first["type"] == "connected", first
    return ws, str(first["client"])


async def subscribe(ws: ClientConnection, channel: str = CHANNEL, presence: bool = False) -> None:
    """Subscribe; the reply must be the connection's next frame (nothing else is due to it)."""
    await ws.send(json.dumps({"type": "subscribe", "channel": channel, "presence": presence, "ref": "s"}))
    reply = await recv_json(ws)
    assert isinstance(reply.get("id"), str), reply
    assert reply == {"type": "subscribed", "channel": channel, "id": reply["id"], "ref": "s"}, reply


async def presence_frame(ws: ClientConnection, ref: str = "p") -> list[dict[str, Any]]:
    """The ``presence`` reply, which must be the connection's next frame."""
    await ws.send(json.dumps({"type": "presence", "channel": CHANNEL, "ref": ref}))
    reply = await recv_json(ws)
    clients = sorted(reply.pop("clients"), key=lambda e: e["client"])
    assert reply == {"type": "presence", "channel": CHANNEL, "ref": ref}, reply
    return clients


async def listed(
    http: httpx.AsyncClient, instance: Instance, jwt_text: str | None = None
) -> list[dict[str, Any]]:
    response = await http.get(f"{instance.http}/channels/{CHANNEL}/presence", headers=bearer(jwt_text))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["channel"] == CHANNEL, body
    return sorted(body["clients"], key=lambda e: e["client"])


async def listed_ids(http: httpx.AsyncClient, instance: Instance) -> set[str]:
    return {e["client"] for e in await listed(http, instance)}


# -- 1. one list, on every instance ---------------------------------------------------------------


@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "no-tokens"])
async def test_every_instance_lists_the_connections_of_every_instance(
    relay: RelayFactory, tokens: bool
) -> None:
    settings = {"jwt_secret": SECRET} if tokens else {}
    a, b = started(relay(**settings), relay(**settings))
    people = {"a": ("ana", {"role": "admin", "seat": 1}), "b": ("bo", ["any", "json", None])}
    jwts = {name: token(*person) if tokens else None for name, person in people.items()}
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(timeout=timeout(5)) as http:
        on_a, id_a = await connected(stack, a, jwts["a"])
        on_b, id_b = await connected(stack, b, jwts["b"])
        assert id_a.split(".")[0] != id_b.split(".")[0]  # <boot>.<n>: each process names its own
        await subscribe(on_a)
        await subscribe(on_b)
        if tokens:
            expected = sorted(
                [entry(id_a, *people["a"]), entry(id_b, *people["b"])], key=lambda e: e["client"]
            )
        else:
            expected = sorted([entry(id_a), entry(id_b)], key=lambda e: e["client"])

        async def both_listed() -> bool:  # joins are written by each instance's writer task
            return await listed(http, a, jwts["a"]) == expected

        await eventually(both_listed, 5, "both connections on A's list")
        assert await listed(http, b, jwts["b"]) == expected
        assert await presence_frame(on_a) == expected
        assert await presence_frame(on_b) == expected


# -- 2. join and leave frames ---------------------------------------------------------------------


async def test_watchers_get_the_joins_and_leaves_of_other_connections_within_a_second(
    relay: RelayFactory,
) -> None:
    a, b = started(relay(), relay())
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(timeout=timeout(5)) as http:
        watcher, watcher_id = await connected(stack, a)
        await subscribe(watcher, presence=True)  # its own join is announced too, and must be skipped
        quiet, quiet_id = await connected(stack, a)
        await subscribe(quiet)  # present, but not watching
        assert await recv_json(watcher) == frame("join", entry(quiet_id))  # not its own join first
        other, other_id = await connected(stack, b)

        await subscribe(other)
        assert await recv_json(watcher) == frame("join", entry(other_id))

        sent = time.monotonic()
        await other.send(json.dumps({"type": "unsubscribe", "channel": CHANNEL, "ref": "u"}))
        assert (await recv_json(other))["type"] == "unsubscribed"
        assert await recv_json(watcher) == frame("leave", entry(other_id))
        after_unsubscribe = time.monotonic() - sent
        # the hash changes before the announcement: once heard, the entry is gone from every list
        assert other_id not in await listed_ids(http, a)
        assert other_id not in await listed_ids(http, b)

        await subscribe(other)
        assert await recv_json(watcher) == frame("join", entry(other_id))
        sent = time.monotonic()
        await other.close()
        assert await recv_json(watcher) == frame("leave", entry(other_id))
        after_close = time.monotonic() - sent
        assert other_id not in await listed_ids(http, a)

        assert after_unsubscribe < timeout(1), f"leave after unsubscribe took {after_unsubscribe:.2f}s"
        assert after_close < timeout(1), f"leave after close took {after_close:.2f}s"
        # Had the quiet subscription been sent a join or a leave, it would have been queued before
        # this reply: A handed the last leave to its watchers before the watcher above got it
        assert await presence_frame(quiet) == sorted(
            [entry(watcher_id), entry(quiet_id)], key=lambda e: e["client"]
        )
        # and the watcher got nothing more (its own join least of all)
        assert await presence_frame(watcher) == sorted(
            [entry(watcher_id), entry(quiet_id)], key=lambda e: e["client"]
        )


# -- 3. an instance that dies without a word ------------------------------------------------------


async def test_a_killed_instance_s_connections_drop_out_of_every_list_within_the_ttl(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    ttl = 2.0
    a, b = started(relay(presence_ttl=str(ttl)), relay(presence_ttl=str(ttl)))
    key = f"{prefix}:{{{CHANNEL}}}:presence"
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(timeout=timeout(5)) as http:
        survivor, survivor_id = await connected(stack, a)
        await subscribe(survivor)
        doomed, doomed_id = await connected(stack, b)
        await subscribe(doomed)

        async def both_listed() -> bool:
            return await listed_ids(http, a) == {survivor_id, doomed_id}

        await eventually(both_listed, 5, "both connections on A's list")

        b.signal(signal.SIGKILL)
        killed = time.monotonic()
        assert await asyncio.to_thread(b.wait_exit, 5) == -signal.SIGKILL

        async def dropped() -> bool:
            return doomed_id not in await listed_ids(http, a)

        await eventually(dropped, ttl + 3, "the killed instance's connection to leave A's list", interval=0.1)
        gone_after = time.monotonic() - killed
        assert gone_after < timeout(ttl + 0.75), f"listed {gone_after:.2f}s after SIGKILL (TTL {ttl}s)"
        assert await listed_ids(http, a) == {survivor_id}
        # the list that found the dead entry also removed it from Redis
        assert set(redis_client.hgetall(key)) == {survivor_id}


async def test_a_heartbeat_redis_lost_sets_the_instance_s_entries_right(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    """Redis lost writes (a restart from an older snapshot, a failover to a replica that was
    behind): here a leave and the heartbeat itself. The instance's next beat finds its key
    changed and starts a new epoch: the entry whose leave was lost stops counting, and the
    connection that is still there is listed again."""
    a = relay(presence_ttl="1.5").start()  # a beat every 0.5 s
    key = f"{prefix}:{{{CHANNEL}}}:presence"
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(timeout=timeout(5)) as http:
        ws, client = await connected(stack, a)
        await subscribe(ws)
        boot = client.partition(".")[0]
        beat = redis_client.get(f"{prefix}:present:{boot}")
        assert isinstance(beat, str)
        epoch = beat.partition(" ")[0]
        ghost = f"{boot}.999"  # a connection of the instance that left, its leave lost by Redis
        redis_client.hset(key, ghost, f"{epoch} {json.dumps(entry(ghost), separators=(',', ':'))}")
        assert await listed_ids(http, a) == {client, ghost}
        redis_client.delete(f"{prefix}:present:{boot}")  # and the heartbeat lost with it

        async def set_right() -> bool:
            return await listed_ids(http, a) == {client}

        await eventually(set_right, 5, "the live connection listed again, the ghost not", interval=0.1)
        stored = redis_client.hgetall(key)
        assert set(stored) == {client}  # the ghost removed by a list, the live one written again
        assert stored[client].startswith(f"{int(epoch) + 1} ")  # in a new epoch
        assert await presence_frame(ws) == [entry(client)]


# -- 4. the heartbeat's cost ----------------------------------------------------------------------


def commands(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, dict[str, Any]] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


async def commands_during(client: redis.Redis, seconds: float) -> dict[str, int]:
    """Commands Redis ran during the window (our own INFO left out)."""
    before = commands(client)
    await asyncio.sleep(seconds)  # a measuring window: there is no event to wait for
    after = commands(client)
    delta = {name: n - before.get(name, 0) for name, n in after.items() if name != "info"}
    return {name: n for name, n in delta.items() if n}


async def test_redis_work_per_heartbeat_does_not_grow_with_present_connections(
    relay: RelayFactory, redis_server: RedisServer, prefix: str
) -> None:
    """Counted on a redis-server of the test's own, so only this instance's commands count
    (the shared Redis serves other tests meanwhile, and Redis 7.0's CLIENT LIST counts no commands
    per connection). ``INFO commandstats`` before and after a window of several heartbeats
    (``RELAY_PRESENCE_TTL=1.5``: one every 0.5 s) in which nothing else happens: every join has been
    written, no message flows. The window may also catch the group heartbeat (a SET every 5 s) and
    the Pub/Sub PING (every 5 s); nothing else runs on a timer. One present connection, then 100
    (each on a channel of its own, so per-channel work would show too): the same few commands."""
    ttl, window = 1.5, 2.0
    beats = window / (ttl / 3)
    redis_server.start()
    client = redis_server.client()
    a = relay(redis_url=redis_server.url, presence_ttl=str(ttl)).start()

    def present_on(count: int) -> bool:
        pipe = client.pipeline(transaction=False)
        for n in range(count):
            pipe.hlen(f"{prefix}:{{c-{n}}}:presence")
        return all(n == 1 for n in pipe.execute())

    async def written(count: int) -> bool:
        return present_on(count)

    async with contextlib.AsyncExitStack() as stack:
        first, _ = await connected(stack, a)
        await subscribe(first, "c-0")
        await eventually(lambda: written(1), 5, "the join written")
        with_one = await commands_during(client, window)

        async def one_more(n: int) -> None:
            ws, _ = await connected(stack, a)
            await subscribe(ws, f"c-{n}")

        await asyncio.gather(*(one_more(n) for n in range(1, 100)))
        await eventually(lambda: written(100), 10, "100 joins written")
        with_many = await commands_during(client, window)

    for counted in (with_one, with_many):
        assert counted.get("set", 0) >= beats - 1, counted  # the heartbeats did run in the window
        assert sum(counted.values()) <= beats + 4, counted  # one SET per beat, plus the odd timer
    assert sum(with_many.values()) <= sum(with_one.values()) + 3, (with_one, with_many)


# -- 6. the drain ---------------------------------------------------------------------------------


async def test_a_draining_instance_s_connections_leave_at_once_not_after_the_ttl(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a, b = started(relay(), relay())  # RELAY_PRESENCE_TTL 30 s: only leaves explain a prompt exit
    key = f"{prefix}:{{{CHANNEL}}}:presence"
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(timeout=timeout(5)) as http:
        watcher, watcher_id = await connected(stack, a)
        await subscribe(watcher, presence=True)
        drained = [await connected(stack, b) for _ in range(3)]
        for ws, _ in drained:
            await subscribe(ws)
        drained_ids = {client for _, client in drained}
        joined = [await recv_json(watcher) for _ in drained]
        assert {j["client"]["client"] for j in joined} == drained_ids
        assert await listed_ids(http, a) == {watcher_id} | drained_ids

        b.signal(signal.SIGTERM)
        sent = time.monotonic()
        left = [await recv_json(watcher) for _ in drained]
        gone_after = time.monotonic() - sent
        assert {(f["type"], f["client"]["client"]) for f in left} == {("leave", c) for c in drained_ids}
        assert await listed_ids(http, a) == {watcher_id}
        assert gone_after < timeout(3), f"the leaves came {gone_after:.2f}s after SIGTERM"
        assert await asyncio.gather(*(close_code(ws) for ws, _ in drained)) == [1012] * 3
        assert await asyncio.to_thread(b.wait_exit, 5) in (0, -signal.SIGTERM)
        assert set(redis_client.hgetall(key)) == {watcher_id}  # removed by leaves, not by a list
