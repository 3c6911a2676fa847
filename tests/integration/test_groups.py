"""Consumer groups across real instances: each message to one member, redelivery, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import Any

import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import RelayFactory
from tests.support import Instance, RedisServer, publish_all, recv_json, timeout, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.processes]


@contextlib.asynccontextmanager
async def member(instance: Instance, channel: str, group: str, **params: Any) -> Any:
    query = "&".join(f"{k}={v}" for k, v in {"group": group, **params}.items())
    async with connect(f"{instance.ws}/ws/consumer/{channel}?{query}", open_timeout=timeout(10)) as ws:
        assert await recv_json(ws) == {"type": "subscribed", "channel": channel, "group": group}
        yield ws


async def ack(ws: ClientConnection, entry_id: str) -> None:
    await ws.send(json.dumps({"type": "ack", "id": entry_id}))


def pending(client: redis.Redis, prefix: str, channel: str, group: str) -> int:
    return int(client.xpending(f"{prefix}:{{{channel}}}", group)["pending"])


async def test_three_members_on_two_instances_share_every_message_exactly_once(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a, b = relay().start(), relay().start()
    got: dict[str, list[str]] = {"a1": [], "a2": [], "b1": []}
    total = 300

    async def work(name: str, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while sum(map(len, got.values())) < total:
                frame = await recv_json(ws, within=20)
                assert (frame["type"], frame["delivery"]) == ("message", 1), frame
                got[name].append(frame["id"])
                await ack(ws, frame["id"])

    async with (
        member(a, "jobs", "workers") as a1,
        member(a, "jobs", "workers") as a2,
        member(b, "jobs", "workers") as b1,
    ):
        workers = [asyncio.create_task(work(n, ws)) for n, ws in (("a1", a1), ("a2", a2), ("b1", b1))]
        ids = await publish_all(f"{a.ws}/ws/producer/jobs", [{"job": n} for n in range(total)])
        done, _ = await asyncio.wait(workers, timeout=timeout(30), return_when=asyncio.FIRST_COMPLETED)
        assert done, "the members did not receive every message in time"
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    everything = [i for ids_of_one in got.values() for i in ids_of_one]
    assert sorted(everything) == sorted(ids)  # each message to exactly one member, none lost
    assert all(got.values()), {name: len(v) for name, v in got.items()}  # every member took part
    wait_until(lambda: pending(redis_client, prefix, "jobs", "workers") == 0, 5, "every ack to reach Redis")


async def test_prefetch_bounds_what_a_member_holds(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay().start()
    async with member(a, "bounded", "g", prefetch=5) as ws:
        ids = await publish_all(f"{a.ws}/ws/producer/bounded", list(range(20)))
        first = [await recv_json(ws) for _ in range(5)]
        assert [f["id"] for f in first] == ids[:5]
        cpu = a.cpu_seconds()
        with pytest.raises(TimeoutError):  # a sixth does not come while five are unacknowledged
            await recv_json(ws, within=2.5)
        assert a.cpu_seconds() - cpu < 0.3  # and the full member costs nothing meanwhile (no spinning)
        assert pending(redis_client, prefix, "bounded", "g") == 5
        await ack(ws, ids[0])
        assert (await recv_json(ws))["id"] == ids[5]  # one ack, one more message
        with pytest.raises(TimeoutError):
            await recv_json(ws, within=0.5)


async def test_unacknowledged_messages_come_back_then_go_to_the_dead_letters(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay(group_claim_idle_ms="300", group_max_deliveries="2").start()
    b = relay(group_claim_idle_ms="300", group_max_deliveries="2").start()
    async with member(a, "flaky", "g") as first:
        ids = await publish_all(f"{a.ws}/ws/producer/flaky", [{"n": n} for n in range(5)])
        assert [(f["id"], f["delivery"]) for f in [await recv_json(first) for _ in ids]] == [
            (i, 1) for i in ids
        ]
    # the first member left without acknowledging: another member, on another instance, gets them
    async with member(b, "flaky", "g") as second:
        again = [await recv_json(second, within=5) for _ in ids]
        assert sorted(f["id"] for f in again) == ids
        assert {f["delivery"] for f in again} == {2}
        assert [f["data"] for f in sorted(again, key=lambda f: f["id"])] == [{"n": n} for n in range(5)]
    # delivered twice and never acknowledged: the next claim buries them
    async with member(a, "flaky", "g") as third:
        dead_key = f"{prefix}:{{flaky}}:dead"
        wait_until(lambda: redis_client.xlen(dead_key) == 5, 5, "the dead letters")
        dead = redis_client.xrange(dead_key)
        assert [fields["id"] for _, fields in dead] == ids
        assert [json.loads(fields["data"]) for _, fields in dead] == [{"n": n} for n in range(5)]
        assert {(fields["group"], fields["deliveries"]) for _, fields in dead} == {("g", "2")}
        assert pending(redis_client, prefix, "flaky", "g") == 0
        later = await publish_all(f"{a.ws}/ws/producer/flaky", ["after"])
        assert (await recv_json(third))["id"] == later[0]  # none of the dead ones came first


async def test_sigkill_of_an_instance_loses_nothing(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay(group_claim_idle_ms="500").start()
    b = relay(group_claim_idle_ms="500").start()
    total = 300
    acked: set[str] = set()
    progress = asyncio.Event()

    async def work(ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while len(acked) < total:
                frame = await recv_json(ws, within=30)
                await asyncio.sleep(0.002)  # some work: messages are held when the instance dies
                await ack(ws, frame["id"])
                acked.add(frame["id"])
                if len(acked) >= 60:
                    progress.set()

    async with (
        member(a, "orders", "billing", prefetch=20) as a1,
        member(a, "orders", "billing", prefetch=20) as a2,
        member(b, "orders", "billing", prefetch=20) as b1,
    ):
        workers = [asyncio.create_task(work(ws)) for ws in (a1, a2, b1)]
        ids = await publish_all(f"{b.ws}/ws/producer/orders", [{"order": n} for n in range(total)])
        await asyncio.wait_for(progress.wait(), timeout(10))
        a.signal(signal.SIGKILL)  # its members' held messages are never acknowledged by them
        await asyncio.wait_for(workers[2], timeout(30))
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    assert acked >= set(ids)  # the survivor ended up with every message the dead ones did not finish
    wait_until(lambda: pending(redis_client, prefix, "orders", "billing") == 0, 5, "no message left pending")


async def test_group_started_from_zero_gets_what_was_published_before(relay: RelayFactory) -> None:
    a = relay().start()
    ids = await publish_all(f"{a.ws}/ws/producer/backlog", list(range(5)))
    async with member(a, "backlog", "late", **{"from": "0"}) as ws:
        assert [(await recv_json(ws))["id"] for _ in ids] == ids
    async with member(a, "backlog", "newer") as ws:  # created at $: only what comes next
        later = await publish_all(f"{a.ws}/ws/producer/backlog", ["next"])
        assert (await recv_json(ws))["id"] == later[0]


async def test_a_group_lost_with_redis_data_is_made_again_and_skips_nothing(
    relay: RelayFactory, redis_server: RedisServer
) -> None:
    redis_server.start()
    a = relay(redis_url=redis_server.url, group_claim_idle_ms="300").start()
    async with member(a, "fragile", "g", prefetch=3) as ws:
        held = await publish_all(f"{a.ws}/ws/producer/fragile", ["before"])
        assert (await recv_json(ws))["id"] == held[0]  # held, not acked
        redis_server.client().flushall()  # Redis lost everything: stream and group
        ids = await publish_all(f"{a.ws}/ws/producer/fragile", ["after-1", "after-2", "after-3"])
        got = [await recv_json(ws, within=10) for _ in range(2)]
        await ack(ws, held[0])  # an ack for an entry Redis forgot: harmless
        await ack(ws, got[0]["id"])
        got.append(await recv_json(ws, within=10))
        assert [f["id"] for f in got] == ids
