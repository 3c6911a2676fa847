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
import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx2
import pytest

from app.client import Consumer, Message, Producer
from tests.compose import Compose, empty_wheelhouse, fill_wheelhouse, inspect, run, standin_images
from tests.support import events_of, free_port, timeout, wait_until

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1200)]

PROJECT = "relay-compose-test"
RELAY_IMAGE = f"{PROJECT}/relay:latest"


@dataclass
class Stack:
    compose: Compose
    url: str

    def relays(self) -> list[str]:
        return self.compose.containers("relay")

    def health(self, container: str) -> str:
        return inspect(container, "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}")

    def redis_cli(self, *args: str) -> str:
        return self.compose("exec", "-T", "redis", "redis-cli", *args, within=30)

    def wait_replicas(self, count: int, within: float = 90) -> list[str]:
        """Until ``count`` relay containers run, each healthy, and the balancer reaches them all;
        their ids."""

        def healthy() -> bool:
            relays = self.relays()
            return len(relays) == count and all(self.health(c) == "healthy" for c in relays)

        wait_until(healthy, within, f"{count} healthy relay containers", interval=0.5)
        relays = self.relays()
        wait_until(
            lambda: self.seen_instances(count) == _hostnames(relays),
            within,
            "the balancer to reach them all",
            interval=0.5,
        )
        return relays

    def seen_instances(self, count: int) -> set[str]:
        """The containers (their hostnames) that answer ``/readyz`` through the balancer, asked
        up to ``4 * count`` times (it takes turns among the least busy)."""
        seen: set[str] = set()
        with httpx2.Client(timeout=timeout(5)) as http:
            for _ in range(4 * count):
                answer = http.get(f"{self.url}/readyz")
                if answer.status_code == 200:
                    seen.add(answer.json()["instance"].rsplit("-", 1)[0])
                if len(seen) == count:
                    break
        return seen


def _hostnames(containers: list[str]) -> set[str]:
    return {c[:12] for c in containers}  # a container's hostname is its short id


def _docker_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if not _docker_answers():
        pytest.fail("no Docker engine answers (scripts/test installs docker.io and starts dockerd)")
    images = standin_images()
    port = free_port()
    compose = Compose(
        PROJECT,
        {
            "RELAY_IMAGE": RELAY_IMAGE,
            "PYTHON_IMAGE": images["python:3.11-slim"],
            "REDIS_IMAGE": images["redis:7"],
            "HAPROXY_IMAGE": images["haproxy:2.6"],
            "PIP_NO_INDEX": "1",
            "RELAY_LB_PORT": f"127.0.0.1:{port}",
        },
    )
    compose.down()  # what an interrupted run left
    stack = Stack(compose, f"http://127.0.0.1:{port}")
    wheels = fill_wheelhouse(images["python:3.11-slim"])
    try:
        compose("up", "-d", "--build", within=900)  # the README's line
        empty_wheelhouse(wheels)
        stack.wait_replicas(3)
        yield stack
    finally:
        empty_wheelhouse(wheels)
        if os.environ.get("RELAY_TEST_KEEP_STACK") != "1":
            with contextlib.suppress(AssertionError):
                _print_logs(compose)
            compose.down()
            subprocess.run(["docker", "rmi", RELAY_IMAGE], capture_output=True, check=False)


def _print_logs(compose: Compose) -> None:
    """The last lines of every container's log, shown by pytest when a test failed."""
    print(compose("logs", "--no-color", "--tail", "40", within=60))


class Followers:
    """What each of several consumers of one channel received (each reconnects and resumes by
    itself)."""

    def __init__(self, url: str, channel: str, count: int) -> None:
        self.consumers = [Consumer(url, channel, max_backoff=0.5, keepalive=5) for _ in range(count)]
        self.got: list[list[Message]] = [[] for _ in self.consumers]
        self._heard = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._follow(c, g)) for c, g in zip(self.consumers, self.got, strict=True)
        ]

    async def _follow(self, consumer: Consumer, into: list[Message]) -> None:
        try:
            async with events_of(consumer) as events:
                async for event in events:
                    assert isinstance(event, Message), f"a consumer was told of a gap: {event}"
                    into.append(event)
                    self._heard.set()
        finally:
            self._heard.set()

    async def have(self, acked: list[str], within: float = 60) -> None:
        """Until each consumer got as many messages as were acked; then each has every acked
        message, once and in order."""
        async with asyncio.timeout(timeout(within)):
            while any(len(received) < len(acked) for received in self.got):
                for task in self._tasks:
                    if task.done():
                        task.result()  # a consumer failed: say why
                self._heard.clear()
                await self._heard.wait()
        for received in self.got:
            assert [m.id for m in received] == acked

    @property
    def reconnects(self) -> int:
        return sum(c.reconnects for c in self.consumers)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def following(url: str, channel: str, count: int) -> AsyncIterator[Followers]:
    """``count`` consumers of ``channel``, each past its first ``subscribed``."""
    followers = Followers(url, channel, count)
    try:
        await asyncio.wait_for(asyncio.gather(*(c.subscribed() for c in followers.consumers)), timeout(30))
        yield followers
    finally:
        await followers.close()


class SteadyLoad:
    """One message after the other through the balancer (each stored once, in order, even when
    sent again) until stopped; ``acked``: the ids, in the order they were acknowledged."""

    def __init__(self, url: str, channel: str) -> None:
        self.producer = Producer(url, channel, window=1, max_backoff=0.5, attempts=60, attempt_timeout=2)
        self.acked: list[str] = []
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SteadyLoad:
        await self.producer.__aenter__()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                self.acked.append(await self.producer.publish({"n": n}))
                self._progress.set()
                n += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.02)  # a rate, not a wait for an event
        finally:
            self._progress.set()

    async def until(self, more: int, within: float = 60) -> None:
        """Until ``more`` messages beyond those acked so far are acked."""
        assert self._task is not None
        target = len(self.acked) + more
        async with asyncio.timeout(timeout(within)):
            while len(self.acked) < target:
                if self._task.done():
                    self._task.result()  # the producer failed: say why
                    raise AssertionError("the producer stopped")
                self._progress.clear()
                await self._progress.wait()

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        try:
            await asyncio.wait_for(self._task, timeout(60))
        finally:
            await self.producer.__aexit__(None, None, None)


def consumers_on(container: str) -> float:
    """The consumer connections one replica holds, from its own /metrics (inside the container:
    the balancer does not pass /metrics)."""
    code = (
        "import re, urllib.request;"
        "t = urllib.request.urlopen('http://127.0.0.1:8000/metrics', timeout=5).read().decode();"
        "m = re.search(r'^relay_connections\\{role=\"consumer\"\\} (\\S+)$', t, re.M);"
        "print(m[1] if m else 0)"
    )
    return float(run(["docker", "exec", container, "python", "-c", code], 30))


async def test_three_healthy_replicas_behind_the_balancer_each_get_connections(stack: Stack) -> None:
    relays = stack.relays()
    assert len(relays) == 3
    assert all(stack.health(c) == "healthy" for c in relays)
    assert stack.health(stack.compose.containers("redis")[0]) == "healthy"
    # /readyz through the balancer names each of the three
    assert stack.seen_instances(3) == _hostnames(relays)
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
            run(["docker", "kill", killed], 30)  # its sockets break
            await load.until(50)
            run(["docker", "restart", "--time", "15", restarted], 60)  # drains: its consumers get 1012
            await load.until(50)
        await followers.have(load.acked)
    assert followers.reconnects >= sum(on_them)
    stack.compose("up", "-d", within=180)  # the killed one back, as an operator would
    await asyncio.to_thread(stack.wait_replicas, 3)


async def test_redis_restarted_keeps_every_acked_message(stack: Stack) -> None:
    (redis,) = stack.compose.containers("redis")
    started = inspect(redis, "{{.State.StartedAt}}")
    channel = f"durable-{uuid.uuid4().hex[:8]}"
    async with following(stack.url, channel, 3) as followers:
        async with SteadyLoad(stack.url, channel) as load:
            await load.until(50)
            stack.compose("restart", "redis", within=60)
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

    def a_round() -> bool:
        return "round done: " in stack.compose("logs", "--no-color", "janitor", within=30)

    wait_until(a_round, 30, "a janitor round in its log", interval=1)
