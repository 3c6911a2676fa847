"""Redis connections per instance, and Redis work per message, do not grow with consumers or channels."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import RelayFactory
from tests.support import Instance, RedisServer, publish_all, recv_json, recv_messages, timeout, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.processes]


def relay_connections(client: redis.Redis, instance_name: str) -> int:
    return sum(1 for c in client.client_list() if c.get("name", "").startswith(f"relay:{instance_name}:"))


async def open_consumers(stack: contextlib.AsyncExitStack, urls: list[str]) -> list[ClientConnection]:
    """Open every consumer (64 handshakes at a time) and read its ``subscribed`` frame."""
    gate = asyncio.Semaphore(64)

    async def one(url: str) -> ClientConnection:
        async with gate:
            ws = await stack.enter_async_context(connect(url, open_timeout=timeout(30)))
            assert (await recv_json(ws, within=30))["type"] == "subscribed"
            return ws

    return list(await asyncio.gather(*(one(url) for url in urls)))


async def test_connection_count_does_not_grow_with_consumers_or_channels(
    relay: RelayFactory, redis_client: redis.Redis
) -> None:
    a: Instance = relay(instance_name="conncount").start()
    # warm every pool: a publish, a history read, a consumer
    await publish_all(f"{a.ws}/ws/producer/warm", [0])
    async with connect(f"{a.ws}/ws/consumer/warm?from=0") as ws:
        await recv_messages_after_subscribed(ws, 1)
    # documented bound: 1 publishing + up to 3 reading + 1 Pub/Sub connection
    assert 3 <= relay_connections(redis_client, "conncount") <= 5

    async with contextlib.AsyncExitStack() as stack:
        crowd = await open_consumers(stack, [f"{a.ws}/ws/consumer/crowd"] * 500)
        ids = await publish_all(f"{a.ws}/ws/producer/crowd", [{"to": "all"}])
        for ws in crowd:
            assert [m["id"] for m in await recv_messages(ws, 1)] == ids
        assert relay_connections(redis_client, "conncount") <= 5

        singles = await open_consumers(stack, [f"{a.ws}/ws/consumer/user-{n}" for n in range(2000)])
        # one message per channel on 200 of them
        for n in range(0, 2000, 10):
            await publish_all(f"{a.ws}/ws/producer/user-{n}", [{"user": n}], within=10)
        for n in range(0, 2000, 10):
            assert (await recv_messages(singles[n], 1))[0]["data"] == {"user": n}
        assert relay_connections(redis_client, "conncount") <= 5
        assert a.metric("relay_channels_followed") == 2001


async def recv_messages_after_subscribed(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    assert json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))["type"] == "subscribed"
    return await recv_messages(ws, count)


def commands_processed(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


async def publish_one_by_one(instance: Instance, channel: str, count: int) -> None:
    async with connect(f"{instance.ws}/ws/producer/{channel}") as ws:
        for n in range(count):
            await ws.send(json.dumps(n))
            assert (await recv_json(ws))["type"] == "ack"


async def test_redis_work_per_message_does_not_grow_with_followed_channels(
    relay: RelayFactory, redis_server: RedisServer
) -> None:
    """Counted on a Redis of the test's own: commands per published message, with 1 and with
    1,001 channels followed by the instance."""
    redis_server.start()
    client = redis_server.client()
    a = relay(redis_url=redis_server.url).start()
    async with contextlib.AsyncExitStack() as stack:
        (listener,) = await open_consumers(stack, [f"{a.ws}/ws/consumer/measured"])
        before = commands_processed(client)
        await publish_one_by_one(a, "measured", 200)
        await recv_messages(listener, 200)
        with_one = commands_processed(client) - before

        await open_consumers(stack, [f"{a.ws}/ws/consumer/idle-{n}" for n in range(1000)])
        before = commands_processed(client)
        await publish_one_by_one(a, "measured", 200)
        await recv_messages(listener, 200)
        with_many = commands_processed(client) - before
    # one script call per message; Redis counts it and the 4 commands it runs (XREVRANGE, XADD,
    # XLEN, PUBLISH), plus INFO and the odd PING, however many channels are followed
    assert with_one <= 5 * 200 + 10
    assert with_many <= with_one + 10


async def test_group_members_hold_no_redis_connection_of_their_own(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a: Instance = relay(instance_name="groupcount").start()
    pairs = [(f"work-{c}", f"g{g}") for c in range(50) for g in range(2)]  # 100 (channel, group) readers
    async with contextlib.AsyncExitStack() as stack:
        urls = [f"{a.ws}/ws/consumer/{c}?group={g}&prefetch=2" for c, g in pairs for _ in range(4)]
        await open_consumers(stack, urls)  # 400 members
        for c in range(50):
            await publish_all(f"{a.ws}/ws/producer/work-{c}", [{"job": n} for n in range(4)], within=10)

        def handed_out() -> int:
            return sum(int(redis_client.xpending(f"{prefix}:{{{c}}}", g)["pending"]) for c, g in pairs)

        # every message reached one member of each group of its channel (held, not yet acked)
        await asyncio.to_thread(
            wait_until, lambda: handed_out() == 4 * len(pairs), 10, "every group to hand out its messages"
        )
        assert relay_connections(redis_client, "groupcount") <= 5
