"""The deployment's own load balancer (deploy/haproxy.cfg, only its upstreams replaced) in front of
three real instances on one Redis, as docker-compose.yml runs it, on the host."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app.client import Consumer, Gap, Message, Producer
from tests.conftest import RelayFactory
from tests.support import ROOT, Instance, events_of, eventually, free_port, timeout, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.processes]


class Balancer:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
        if binary is None:
            raise AssertionError("haproxy is not installed (scripts/test installs it)")
        self.port = port
        env = {"RELAY_LB_BIND": f"127.0.0.1:{port}", "PATH": "/usr/sbin:/usr/bin:/bin"}
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [binary, "-db", "-f", str(config)], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout(10))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def balancer_config(instances: list[Instance], into: Path) -> Path:
    """deploy/haproxy.cfg with the servers between its upstream markers (one pair per backend)
    replaced, nothing else."""
    text = (ROOT / "deploy" / "haproxy.cfg").read_text()
    servers = "".join(f"    server relay{n} 127.0.0.1:{i.port} check\n" for n, i in enumerate(instances))
    replaced, count = re.subn(
        r"(    # upstreams begin\n).*?(    # upstreams end\n)", rf"\g<1>{servers}\g<2>", text, flags=re.S
    )
    assert count == 2, "deploy/haproxy.cfg lost its upstream markers"
    assert "server-template" not in replaced, "a backend of deploy/haproxy.cfg lost its upstream markers"
    into.write_text(replaced)
    return into


@contextlib.contextmanager
def balanced(
    relay: RelayFactory, tmp_path: Path, **settings: str
) -> Iterator[tuple[list[Instance], Balancer]]:
    """Three instances behind the balancer, all ready."""
    instances = [relay(**settings).start(ready=False) for _ in range(3)]
    for instance in instances:
        instance.wait_ready()
    lb = Balancer(balancer_config(instances, tmp_path / "haproxy.cfg"), free_port(), tmp_path / "haproxy.log")
    try:
        wait_until(lambda: _ready(lb), 10, "the balancer to answer")
        yield instances, lb
    finally:
        lb.stop()


@pytest.fixture
def cluster(relay: RelayFactory, tmp_path: Path) -> Iterator[tuple[list[Instance], Balancer]]:
    with balanced(relay, tmp_path, drain_grace="2", drain_timeout="2") as made:
        yield made


@pytest.fixture
def quick_cluster(relay: RelayFactory, tmp_path: Path) -> Iterator[tuple[list[Instance], Balancer]]:
    """Instances that exit at once when the test is over (no drain grace)."""
    with balanced(relay, tmp_path, drain_grace="0") as made:
        yield made


def _ready(lb: Balancer) -> bool:
    import httpx2

    try:
        return httpx2.get(f"{lb.url}/readyz", timeout=1).status_code == 200
    except httpx2.HTTPError:
        return False


async def follow(consumer: Consumer, into: list[Message], wanted: int) -> None:
    """Collect messages until ``wanted``; gaps are a failure here (retention is ample)."""
    async with events_of(consumer) as events:
        async for event in events:
            assert not isinstance(event, Gap), event
            into.append(event)
            if len(into) >= wanted:
                return


def consumers_on(instance: Instance) -> float:
    import httpx2

    text = httpx2.get(f"{instance.http}/metrics", timeout=5).text
    match = re.search(r'^relay_connections\{role="consumer"\} (\S+)$', text, re.M)
    return float(match[1]) if match else 0.0


async def test_through_the_balancer_nothing_is_lost_when_instances_drain_or_die(
    cluster: tuple[list[Instance], Balancer],
) -> None:
    instances, lb = cluster
    total = 600
    consumers = [Consumer(lb.url, "stream", max_backoff=0.5) for _ in range(9)]
    got: list[list[Message]] = [[] for _ in consumers]
    tasks = [asyncio.create_task(follow(c, g, total)) for c, g in zip(consumers, got, strict=True)]

    # every consumer is subscribed (its position known) before anything is published
    await asyncio.wait_for(asyncio.gather(*(c.subscribed() for c in consumers)), timeout(15))
    # the operator's endpoints are not exposed through the public balancer
    import httpx2

    async with httpx2.AsyncClient(timeout=timeout(5)) as http:
        assert (await http.get(f"{lb.url}/metrics")).status_code == 404
        assert (await http.get(f"{instances[0].http}/metrics")).status_code == 200
    # leastconn spread them over all three instances
    spread = await asyncio.to_thread(lambda: [consumers_on(i) for i in instances])
    assert all(n >= 1 for n in spread), spread

    async with Producer(lb.url, "stream", window=16, max_backoff=0.5) as producer:

        async def publish(start: int, stop: int) -> list[str]:
            return [await producer.publish({"n": n}) for n in range(start, stop)]

        ids = await publish(0, 200)
        instances[0].signal(signal.SIGTERM)  # drains: its consumers get 1012 and come back elsewhere
        ids += await publish(200, 400)
        assert await asyncio.to_thread(instances[0].wait_exit, 10) in (0, -signal.SIGTERM)
        instances[1].signal(signal.SIGKILL)  # dies: its sockets just break
        ids += await publish(400, total)

    await asyncio.wait_for(asyncio.gather(*tasks), timeout(60))
    assert len(set(ids)) == total  # every publish stored once, retries included
    for received in got:
        assert [m.id for m in received] == ids  # each consumer: all of them, in order, once
    assert sum(c.reconnects for c in consumers) >= 2  # the failures did reach some consumers


async def test_through_the_balancer_a_hung_instance_costs_seconds_not_everyones_time(
    quick_cluster: tuple[list[Instance], Balancer], redis_client: redis.Redis, prefix: str
) -> None:
    """One of three instances stops answering (SIGSTOP) under idempotent HTTP producers and resuming
    consumers, all with the client's defaults: publishes go on elsewhere within a second or so,
    consumers on it give up within their keepalive and resume elsewhere, nothing is lost or doubled."""
    instances, lb = quick_cluster
    consumers = [Consumer(lb.url, "hang") for _ in range(6)]
    keepalive = consumers[0].keepalive
    assert keepalive is not None
    got: list[list[tuple[float, Message]]] = [[] for _ in consumers]
    reading = [asyncio.create_task(arrivals(c, g)) for c, g in zip(consumers, got, strict=True)]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.subscribed() for c in consumers)), timeout(15))
        spread = await asyncio.to_thread(lambda: [consumers_on(i) for i in instances])
        hung = instances[spread.index(max(spread))]
        acks: list[float] = []  # when each publish was acknowledged
        published = await publish_while_hung(lb.url, hung, acks, consumers, int(max(spread)))

        entries: Any = redis_client.xrange(f"{prefix}:{{hang}}")
        stored = [entry_id for entry_id, _ in entries]
        keys = [(data["p"], data["n"]) for data in (json.loads(fields["data"]) for _, fields in entries)]
        assert len(set(keys)) == len(keys) == published  # each publish stored once, retries included

        async def delivered() -> bool:
            return all(len(g) >= len(stored) for g in got)

        await eventually(delivered, 20, "every consumer to receive every message")
    finally:
        for task in reading:
            task.cancel()
        await asyncio.gather(*reading, return_exceptions=True)
    for received in got:
        assert [m.id for _, m in received] == stored  # each consumer: all of them, in order, once

    no_ack = max(b - a for a, b in itertools.pairwise(sorted(acks)))
    waits = [max(b - a for (a, _), (b, _) in itertools.pairwise(received)) for received in got]
    print(f"longest span with no publish acked {no_ack:.2f}s; consumers' longest waits", waits)
    assert no_ack <= timeout(3)
    assert max(waits) <= keepalive + timeout(1)  # gave up within the keepalive, resumed at once


async def publish_while_hung(
    url: str, hung: Instance, acks: list[float], consumers: list[Consumer], on_hung: int
) -> int:
    """Three producers publish before, while and after ``hung`` is stopped (long enough for its
    consumers to reconnect); the number of messages they published."""
    stop = asyncio.Event()
    producing = [asyncio.create_task(produce(url, n, acks, stop)) for n in range(3)]
    try:
        await eventually(acked(acks, 50), 10, "publishing to get going")
        hung.signal(signal.SIGSTOP)
        try:

            async def moved() -> bool:  # its consumers came back through the balancer, elsewhere
                return sum(c.reconnects for c in consumers) >= on_hung

            keepalive = consumers[0].keepalive or 0
            await eventually(moved, keepalive + 5, "the hung instance's consumers to reconnect")
            await eventually(acked(acks, len(acks) + 50), 10, "publishing to go on while it hangs")
        finally:
            hung.signal(signal.SIGCONT)
        await eventually(acked(acks, len(acks) + 50), 10, "publishing to go on after it woke up")
    finally:
        stop.set()
        counts = await asyncio.wait_for(asyncio.gather(*producing, return_exceptions=True), timeout(15))
    for count in counts:
        if isinstance(count, BaseException):
            raise count
    return sum(counts)  # type: ignore[arg-type]


def acked(acks: list[float], count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(acks) >= count

    return check


async def arrivals(consumer: Consumer, into: list[tuple[float, Message]]) -> None:
    """Collect messages with the time each arrived, until cancelled (gaps are a failure here)."""
    async with events_of(consumer) as events:
        async for event in events:
            assert not isinstance(event, Gap), event
            into.append((time.monotonic(), event))


async def produce(url: str, n: int, acks: list[float], stop: asyncio.Event) -> int:
    """Publish ``{"p": n, "n": i}`` one after the other at a steady pace until ``stop``; the count."""
    async with Producer(url, "hang") as producer:
        for i in range(5000):
            if stop.is_set():
                return i
            await producer.publish({"p": n, "n": i})
            acks.append(time.monotonic())
            await asyncio.sleep(0.02)  # a steady rate, not a wait for an event
    raise AssertionError("the producer was never told to stop")
