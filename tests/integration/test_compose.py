"""``docker compose up`` for real: the project's own Dockerfile, docker-compose.yml and
deploy/haproxy.cfg, on stand-in base images made from Debian's packages (tests/compose.py), the
relay image built from a wheelhouse made on the host. Everything is reached from the host through
the balancer's published port on 127.0.0.1 (and ``docker compose exec`` for redis-cli).

The stack is built and started once for the module; the tests run in order and each leaves it as
it found it (three healthy replicas). At the end the project's containers, network and volume and
the relay image are removed; the stand-in images stay, cached for the next run.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx2
import pytest

from tests.compose import Stack, consumers_on, hostnames, inspect, launched, run
from tests.integration.load import SteadyLoad, following
from tests.support import timeout, wait_until

pytestmark = [pytest.mark.compose, pytest.mark.timeout(timeout(1200))]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with launched("docker-compose.yml", "relay-compose-test") as made:
        yield made


async def test_three_healthy_replicas_behind_the_balancer_each_get_connections(stack: Stack) -> None:
    relays = stack.relays()
    assert len(relays) == 3
    assert all(stack.health(c) == "healthy" for c in relays)
    assert stack.health(stack.compose.containers("redis")[0]) == "healthy"
    # /readyz through the balancer names each of the three
    assert stack.seen_instances(3) == hostnames(relays)
    async with following(stack.url, f"spread-{uuid.uuid4().hex[:8]}", 9):
        spread = await asyncio.to_thread(lambda: [consumers_on(c) for c in relays])
    assert all(n >= 1 for n in spread), spread
    async with httpx2.AsyncClient(timeout=timeout(5)) as http:
        assert (await http.get(f"{stack.url}/metrics")).status_code == 404  # the operator's, not public


async def test_a_consumer_gets_what_a_producer_sends_and_redis_cli_reads_the_stream(stack: Stack) -> None:
    channel = f"demo-{uuid.uuid4().hex[:8]}"
    async with following(stack.url, channel, 1) as followers:
        async with httpx2.AsyncClient(timeout=timeout(10)) as http:
            answer = await http.post(f"{stack.url}/channels/{channel}/messages", content=b'{"hello":"world"}')
        assert answer.status_code == 201, answer.text
        entry = answer.json()["id"]
        await followers.have([entry], within=10)
    assert followers.got[0][0].data == {"hello": "world"}
    shown = stack.redis_cli("XRANGE", f"relay:{{{channel}}}", "-", "+").split()
    assert entry in shown
    assert '{"hello":"world"}' in shown


async def test_scaled_to_five_the_balancer_finds_the_new_replicas_by_dns(stack: Stack) -> None:
    before = set(stack.relays())
    try:
        stack.compose("up", "-d", "--scale", "relay=5", within=180)
        after = await asyncio.to_thread(stack.wait_replicas, 5)
        assert before < set(after)
    finally:
        stack.compose("up", "-d", "--scale", "relay=3", within=180)
        await asyncio.to_thread(stack.wait_replicas, 3)


async def test_a_replica_killed_and_another_restarted_lose_no_acked_message(stack: Stack) -> None:
    killed, restarted = stack.relays()[:2]
    channel = f"rolling-{uuid.uuid4().hex[:8]}"
    async with following(stack.url, channel, 6) as followers:
        on_them = await asyncio.to_thread(lambda: [consumers_on(killed), consumers_on(restarted)])
        assert all(n >= 1 for n in on_them), on_them  # the failures reach some consumers
        async with SteadyLoad(stack.url, channel) as load:
            await load.until(50)
            await asyncio.to_thread(run, ["docker", "kill", killed], 30)  # its sockets break
            await load.until(50)
            # drains (its consumers get 1012) and starts again, the load going on meanwhile
            await asyncio.to_thread(run, ["docker", "restart", "--time", "15", restarted], 60)
            await load.until(50)
        await followers.have(load.acked)
    assert followers.reconnects >= sum(on_them)
    await asyncio.to_thread(
        stack.compose, "up", "-d", within=180
    )  # the killed one back, as an operator would
    await asyncio.to_thread(stack.wait_replicas, 3)


async def test_redis_restarted_keeps_every_acked_message(stack: Stack) -> None:
    (redis,) = stack.compose.containers("redis")
    started = inspect(redis, "{{.State.StartedAt}}")
    channel = f"durable-{uuid.uuid4().hex[:8]}"
    async with following(stack.url, channel, 3) as followers:
        async with SteadyLoad(stack.url, channel) as load:
            await load.until(50)
            await asyncio.to_thread(stack.compose, "restart", "redis", within=60)
            await load.until(50, within=90)
        await followers.have(load.acked)
    assert inspect(redis, "{{.State.StartedAt}}") != started
    assert "DB loaded from append only file" in stack.compose("logs", "--no-color", "redis", within=30)
    stored = stack.redis_cli("XRANGE", f"relay:{{{channel}}}", "-", "+").split()
    assert set(load.acked) <= set(stored)
    await asyncio.to_thread(stack.wait_replicas, 3)


def test_the_janitor_holds_its_lease_and_does_its_rounds(stack: Stack) -> None:
    (janitor,) = stack.compose.containers("janitor")
    lease = stack.redis_cli("GET", "relay:janitor:lease").strip()
    assert lease.startswith(f"{janitor[:12]}-"), lease  # the janitor's hostname and pid

    def rounds() -> int:
        return stack.compose("logs", "--no-color", "janitor", within=30).count("round done: ")

    so_far = rounds()
    # RELAY_JANITOR_INTERVAL is 10 s: another round within 30
    wait_until(lambda: rounds() > so_far, 30, "another janitor round in its log", interval=1)
