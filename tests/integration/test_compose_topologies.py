"""The Sentinel and Cluster compose files for real (tests/compose.py, as test_compose.py does for
docker-compose.yml): each brought up with ``up -d --build``, its master killed under a steady
publish load through the balancer on 127.0.0.1, and brought back.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from redis.crc import key_slot

from tests.compose import Stack, launched
from tests.integration.load import Followers, SteadyLoad, following
from tests.support import timeout, wait_until

pytestmark = [pytest.mark.compose, pytest.mark.timeout(timeout(900))]


def sentinels_master(stack: Stack) -> str:
    """The master sentinel-1 names ("" while it cannot say)."""
    try:
        reply = stack.redis_cli(
            "-p", "26379", "SENTINEL", "get-master-addr-by-name", "mymaster", service="sentinel-1"
        ).split()
    except AssertionError:  # redis-cli failed: polled again
        return ""
    return reply[0] if reply else ""


def role(stack: Stack, node: str) -> str:
    """The node's role ("" while it does not answer, as just after it started)."""
    try:
        reply = stack.redis_cli("ROLE", service=node).split()
    except AssertionError:
        return ""
    return reply[0] if reply else ""


async def test_the_sentinel_file_fails_over_and_acks_again_once_the_old_master_is_back() -> None:
    with launched("docker-compose.sentinel.yml", "relay-compose-sentinel-test") as stack:
        assert sentinels_master(stack) == "redis-master"
        channel = f"failover-{uuid.uuid4().hex[:8]}"
        async with following(stack.url, channel, 3) as followers:
            async with SteadyLoad(stack.url, channel) as load:
                await load.until(30)
                await asyncio.to_thread(stack.compose, "kill", "redis-master")
                await asyncio.to_thread(
                    wait_until,
                    lambda: sentinels_master(stack) == "redis-replica",
                    60,
                    "the sentinels to promote the replica",
                    0.5,
                )
                # RELAY_ACK_REPLICAS=1: acks wait for a replica, so for the old master to be back
                await asyncio.to_thread(stack.compose, "start", "redis-master")
                await load.until(30, within=120)
            await followers.cover(load.acked)
        assert role(stack, "redis-master") == "slave"
        await asyncio.to_thread(stack.wait_replicas, 3)


def _slots_of(stack: Stack, node: str) -> set[int]:
    """The slots the node serves as a master (CLUSTER NODES, its own line)."""
    lines = stack.redis_cli("CLUSTER", "NODES", service=node).splitlines()
    mine = next(line for line in lines if "myself" in line).split()
    slots: set[int] = set()
    for part in mine[8:]:
        first, _, last = part.partition("-")
        slots.update(range(int(first), int(last or first) + 1))
    return slots


def _channels(on: set[int], count: int, inside: bool) -> list[str]:
    """``count`` channel names whose slot is (or is not) in ``on``."""
    found: list[str] = []
    for _ in range(10_000):
        name = f"shard-{uuid.uuid4().hex[:8]}"
        if (key_slot(f"relay:{{{name}}}".encode()) in on) == inside:
            found.append(name)
        if len(found) == count:
            return found
    raise AssertionError("no channel names found for the slots")


async def test_the_cluster_file_carries_on_when_the_node_it_starts_from_dies() -> None:
    # RELAY_REDIS_URL names redis-1: the relays learnt the cluster from it, and must do without it
    with launched("docker-compose.cluster.yml", "relay-compose-cluster-test") as stack:
        seed_slots = _slots_of(stack, "redis-1")
        assert seed_slots, "redis-1 is expected to start as a master"
        on_seed, elsewhere = _channels(seed_slots, 2, True), _channels(seed_slots, 2, False)
        async with contextlib.AsyncExitStack() as running:
            followers: dict[str, Followers] = {}
            loads: dict[str, SteadyLoad] = {}
            for channel in on_seed + elsewhere:
                followers[channel] = await running.enter_async_context(following(stack.url, channel, 1))
            for channel in on_seed + elsewhere:
                loads[channel] = await running.enter_async_context(SteadyLoad(stack.url, channel))
            await asyncio.gather(*(load.until(20) for load in loads.values()))
            await asyncio.to_thread(stack.compose, "kill", "redis-1")
            # its replica takes its slots: publishing goes on on every channel, its own too
            await asyncio.gather(*(load.until(20, within=90) for load in loads.values()))
            settled = {channel: len(load.acked) for channel, load in loads.items()}
            await asyncio.gather(*(load.until(20) for load in loads.values()))
            for load in loads.values():
                await load.stop()
            for channel in elsewhere:  # nothing of theirs was lost
                await followers[channel].cover(loads[channel].acked)
            for channel in on_seed:  # what the new master acked (RELAY_ACK_REPLICAS=0 in the file)
                await followers[channel].cover(loads[channel].acked[settled[channel] :])
        await asyncio.to_thread(stack.compose, "start", "redis-1")
        await asyncio.to_thread(
            wait_until, lambda: role(stack, "redis-1") == "slave", 60, "redis-1 back as a replica", 0.5
        )
        await asyncio.to_thread(stack.wait_replicas, 3)
