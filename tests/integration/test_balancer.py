"""The deployment's own load balancer (deploy/haproxy.cfg, only its upstreams replaced) in front of
three real instances on one Redis, as docker-compose.yml runs it, on the host."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.client import Consumer, Gap, Message, Producer
from tests.conftest import RelayFactory
from tests.support import ROOT, Instance, free_port, timeout, wait_until

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
    """deploy/haproxy.cfg with the servers between its upstream markers replaced, nothing else."""
    text = (ROOT / "deploy" / "haproxy.cfg").read_text()
    servers = "".join(f"    server relay{n} 127.0.0.1:{i.port} check\n" for n, i in enumerate(instances))
    replaced, count = re.subn(
        r"(    # upstreams begin\n).*?(    # upstreams end\n)", rf"\g<1>{servers}\g<2>", text, flags=re.S
    )
    assert count == 1, "deploy/haproxy.cfg lost its upstream markers"
    into.write_text(replaced)
    return into


@pytest.fixture
def cluster(relay: RelayFactory, tmp_path: Path) -> Iterator[tuple[list[Instance], Balancer]]:
    instances = [relay(drain_grace="2", drain_timeout="2").start() for _ in range(3)]
    lb = Balancer(balancer_config(instances, tmp_path / "haproxy.cfg"), free_port(), tmp_path / "haproxy.log")
    try:
        wait_until(lambda: _ready(lb), 10, "the balancer to answer")
        yield instances, lb
    finally:
        lb.stop()


def _ready(lb: Balancer) -> bool:
    import httpx2

    try:
        return httpx2.get(f"{lb.url}/readyz", timeout=1).status_code == 200
    except httpx2.HTTPError:
        return False


async def follow(consumer: Consumer, into: list[Message], wanted: int) -> None:
    """Collect messages until ``wanted``; gaps are a failure here (retention is ample)."""
    async for event in consumer:
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
