"""Redis Sentinel: the master SIGKILLed under a steady publish load, with replica acks on.

Real processes: a master, a replica and three sentinels (``redis-server --sentinel``), two relay
instances that know only the sentinels, consumers on both."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from websockets.asyncio.client import connect

from tests.conftest import RelayFactory, base_env
from tests.integration.load import SteadyProducer, check_delivery, tails
from tests.support import Instance, eventually, recv_json, timeout, wait_until
from tests.topologies import SentinelSet

pytestmark = [pytest.mark.processes]


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    workdir = tmp_path / "sentinel"
    workdir.mkdir()
    # two replicas: once one is promoted, the sentinels point the other at it, so acks with
    # RELAY_ACK_REPLICAS=1 go on after a failover without waiting for the killed master to return
    topology = SentinelSet(workdir, replicas=2)
    try:
        yield topology.start()
    finally:
        topology.close()


def on_sentinels(relay: RelayFactory, sentinels: SentinelSet, **settings: str) -> Instance:
    return relay(
        redis_url="",  # unset: the sentinels say where the master is
        redis_sentinels=sentinels.sentinels_setting,
        redis_sentinel_master=sentinels.master_name,
        redis_timeout="1",
        **settings,
    )


async def test_a_killed_master_loses_no_acked_message_and_consumers_carry_on(
    relay: RelayFactory, sentinels: SentinelSet, prefix: str
) -> None:
    a = on_sentinels(relay, sentinels, ack_replicas="1").start()
    b = on_sentinels(relay, sentinels, ack_replicas="1").start()
    channel = "failover"
    async with tails(f"{a.ws}/ws/consumer/{channel}", f"{b.ws}/ws/consumer/{channel}") as (on_a, on_b):
        producer = SteadyProducer(b.ws, channel).start()
        await eventually(lambda: _more(producer, 100), 20, "100 acks before the failover")

        old = await asyncio.to_thread(sentinels.kill_master)
        await asyncio.to_thread(sentinels.wait_failover, old)
        acked_at_failover = len(producer.acked)
        await eventually(lambda: _more(producer, acked_at_failover + 100), 40, "acks after the failover")
        await producer.stop()

        last = max(producer.acked.values(), key=_id_key)
        for tail in (on_a, on_b):
            await tail.wait_for(last)
            check_delivery(tail, producer.acked)
        assert {code for _, code in producer.refused} <= {"unavailable"}, producer.refused

    stored = {
        entry_id: fields["data"]
        for entry_id, fields in sentinels.master_client().xrange(f"{prefix}:{{{channel}}}")
    }
    lost = {seq: entry_id for seq, entry_id in producer.acked.items() if entry_id not in stored}
    assert not lost, f"{len(lost)} acked message(s) missing after the failover: {sorted(lost)[:5]}"
    for seq, entry_id in producer.acked.items():
        assert json.loads(stored[entry_id]) == {"seq": seq}
    for instance in (a, b):
        await asyncio.to_thread(wait_until, lambda i=instance: i.readyz() == 200, 10, "/readyz 200")
    assert producer.refused, "the failover should have refused some publishes meanwhile"


async def test_consumer_groups_and_the_janitor_carry_on_across_a_failover(
    relay: RelayFactory, sentinels: SentinelSet, prefix: str, tmp_path: Path
) -> None:
    a = on_sentinels(relay, sentinels, ack_replicas="1").start()
    janitor = Instance(
        base_env(
            redis_sentinels=sentinels.sentinels_setting,
            redis_sentinel_master=sentinels.master_name,
            redis_timeout="1",
            key_prefix=prefix,
            janitor_interval="0.2",
            janitor_reap_idle_ms="0",
        ),
        tmp_path / "janitor.log",
        [sys.executable, "-m", "app", "worker", "janitor"],
    ).start(ready=False)
    channel = "work"
    url = f"{a.ws}/ws/consumer/{channel}?group=g&prefetch=5"
    async with connect(url, open_timeout=timeout(10)) as member:
        assert (await recv_json(member))["type"] == "subscribed"
        async with connect(f"{a.ws}/ws/producer/{channel}") as producer:
            for n in range(3):
                await producer.send(f'{{"job":{n}}}')
                assert (await recv_json(producer))["type"] == "ack"
        held = [(await recv_json(member))["id"] for _ in range(3)]
        master = sentinels.master_client()
        key = f"{prefix}:{{{channel}}}"
        assert master.xpending(key, "g")["pending"] == 3
        # the pending list lives on the master; a replica has it once replication caught up
        assert master.wait(2, 5000) == 2

        old = await asyncio.to_thread(sentinels.kill_master)
        await asyncio.to_thread(sentinels.wait_failover, old)
        assert sentinels.master_client().xpending(key, "g")["pending"] == 3

        for entry_id in held:  # the member acks on the new master, through the same socket
            await member.send(f'{{"type":"ack","id":"{entry_id}"}}')
        new_master = sentinels.master_client()
        await eventually(lambda: _pending_is(new_master, key, 0), 15, "the acks to reach the new master")

    # the janitor found the new master too: a consumer of a process gone goes
    new_master.xreadgroup("g", "gone", {key: "0"}, count=1)  # made on the new master, holds nothing
    try:
        await eventually(lambda: _consumers_are(new_master, key, {"gone"}, False), 15, "the janitor's round")
    finally:
        janitor.stop()


async def _more(producer: SteadyProducer, count: int) -> bool:
    assert producer.running, "the producer stopped"
    return len(producer.acked) >= count


async def _consumers_are(client: redis.Redis, key: str, names: set[str], present: bool) -> bool:
    found = {consumer["name"] for consumer in client.xinfo_consumers(key, "g")}
    return (names <= found) == present


async def _pending_is(client: redis.Redis, key: str, count: int) -> bool:
    return bool(client.xpending(key, "g")["pending"] == count)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)
