"""Consumer-group operations of the broker, on the embedded Redis and on a real one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from app.broker.interface import PublishRequest
from app.protocol import streamid
from tests.contract.conftest import Recorder, housekeeping, raw

OpenBroker = Callable[..., Any]


async def published(broker: Any, channel: str, values: list[str]) -> list[str]:
    ids: list[str] = (await broker.publish([PublishRequest(channel, values)]))[0].ids
    return ids


async def idle(broker: Any, channel: str, group: str, ms: int) -> None:
    """Wait until every pending entry of the group has been idle for ``ms`` (Redis's own clock)."""
    key = f"{broker.keys.prefix}:{{{channel}}}"
    async with asyncio.timeout(5):
        while True:
            entries = await raw(broker).xpending_range(key, group, "-", "+", 100)
            if all(e["time_since_delivered"] >= ms for e in entries):
                return
            await asyncio.sleep(ms / 4000)  # idle time only passes: there is no event to wait for


async def test_each_entry_is_read_by_the_group_once(open_broker: OpenBroker) -> None:
    broker = await open_broker(Recorder())
    await broker.group_create("c", "g", None)
    await broker.group_create("c", "g", None)  # creating it again is harmless
    ids = await published(broker, "c", ["1", "2", "3"])
    first = await broker.group_read("c", "g", "one", 2)
    second = await broker.group_read("c", "g", "two", 10)
    assert [d.entry_id for d in first + second] == ids
    assert {d.count for d in first + second} == {1}
    assert await broker.group_read("c", "g", "one", 10) == []


async def test_a_group_created_from_zero_sees_the_past(open_broker: OpenBroker) -> None:
    broker = await open_broker(Recorder())
    ids = await published(broker, "c", ["1", "2"])
    await broker.group_create("c", "from-zero", streamid.ZERO)
    await broker.group_create("c", "from-now", None)
    assert [d.entry_id for d in await broker.group_read("c", "from-zero", "x", 10)] == ids
    assert await broker.group_read("c", "from-now", "x", 10) == []


async def test_stale_entries_are_claimed_with_a_count_then_buried(open_broker: OpenBroker) -> None:
    broker = await open_broker(Recorder())
    await broker.group_create("c", "g", None)
    ids = await published(broker, "c", ['{"n":1}', '{"n":2}'])
    await broker.group_read("c", "g", "gone", 10)
    await idle(broker, "c", "g", 50)
    claimed = await broker.group_claim("c", "g", "heir", min_idle_ms=50, max_deliveries=2, count=10)
    assert [(d.entry_id, d.data, d.count) for d in claimed.deliveries] == [
        (ids[0], '{"n":1}', 2),
        (ids[1], '{"n":2}', 2),
    ]
    assert claimed.dead == []
    assert (
        await broker.group_claim("c", "g", "x", min_idle_ms=50, max_deliveries=2, count=10)
    ).deliveries == []
    await idle(broker, "c", "g", 50)
    buried = await broker.group_claim("c", "g", "x", min_idle_ms=50, max_deliveries=2, count=10)
    assert (buried.deliveries, buried.dead) == ([], ids)
    dead = await raw(broker).xrange(f"{broker.keys.prefix}:{{c}}:dead")
    assert [(f["id"], f["data"], f["group"], f["deliveries"]) for _, f in dead] == [
        (ids[0], '{"n":1}', "g", "2"),
        (ids[1], '{"n":2}', "g", "2"),
    ]
    assert (await raw(broker).xpending(f"{broker.keys.prefix}:{{c}}", "g"))["pending"] == 0


async def test_touched_entries_are_not_claimed(open_broker: OpenBroker) -> None:
    broker = await open_broker(Recorder())
    await broker.group_create("c", "g", None)
    ids = await published(broker, "c", ["1", "2"])
    await broker.group_read("c", "g", "worker", 10)
    await idle(broker, "c", "g", 60)
    await broker.group_touch("c", "g", "worker", [ids[0]])  # still working on the first
    claimed = await broker.group_claim("c", "g", "other", min_idle_ms=60, max_deliveries=5, count=10)
    assert [d.entry_id for d in claimed.deliveries] == [ids[1]]
    await broker.group_touch("c", "g", "worker", [ids[1]])  # taken from it: touching does not take it back
    pending = await raw(broker).xpending_range(f"{broker.keys.prefix}:{{c}}", "g", "-", "+", 10)
    assert {(p["message_id"], p["consumer"]) for p in pending} == {(ids[0], "worker"), (ids[1], "other")}


async def test_acked_entries_leave_the_pending_list(open_broker: OpenBroker) -> None:
    broker = await open_broker(Recorder())
    await broker.group_create("c", "g", None)
    ids = await published(broker, "c", ["1", "2"])
    await broker.group_read("c", "g", "w", 10)
    await broker.group_ack("c", "g", ids[:1])
    pending = await raw(broker).xpending_range(f"{broker.keys.prefix}:{{c}}", "g", "-", "+", 10)
    assert [p["message_id"] for p in pending] == ids[1:]


async def test_heartbeats_leases_and_housekeeping(open_broker: OpenBroker) -> None:
    broker = await open_broker(Recorder(), stream_max_age=0.05)
    keeper = housekeeping(broker)
    await broker.heartbeat("live", 10_000)
    alive = f"{broker.keys.prefix}:alive"
    assert 0 < await raw(broker).pttl(f"{alive}:live") <= 10_000  # what reap.lua looks at
    assert not await raw(broker).exists(f"{alive}:gone")
    assert await keeper.lease("janitor-a", 10_000)
    assert not await keeper.lease("janitor-b", 10_000)
    assert await keeper.lease("janitor-a", 10_000)  # renewing its own
    ids = await published(broker, "old", ["1", "2"])
    async with asyncio.timeout(5):
        while int((await raw(broker).time())[0]) * 1000 <= int(ids[-1].split("-")[0]) + 60:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # entries only age: there is no event to wait for
    assert await keeper.trim("old") == 2
    assert await keeper.trim("old") == 0
    await broker.group_create("old", "g", None)
    fresh = await published(broker, "old", ["3"])
    await broker.group_read("old", "g", "someone", 1)
    await broker.group_ack("old", "g", fresh)
    assert [(c.group, c.name, c.pending) for c in await keeper.group_consumers("old")] == [
        ("g", "someone", 0)
    ]
    await broker.heartbeat("someone", 10_000)
    assert not await keeper.reap_consumer("old", "g", "someone", 0)  # alive: kept
    await raw(broker).delete(f"{alive}:someone")
    assert not await keeper.reap_consumer("old", "g", "someone", 60_000)  # read too lately: kept
    assert await keeper.reap_consumer("old", "g", "someone", 0)
    assert await keeper.group_consumers("old") == []
