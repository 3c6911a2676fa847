"""The worker processes as an operator runs them: the handler runner and the janitor."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import RelayFactory, base_env
from tests.support import ROOT, Instance, publish_all, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.processes]


WorkerFactory = Callable[..., Instance]


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[WorkerFactory]:
    """``worker(name, args, **settings)``: a ``relay worker ...`` process, stopped after the test."""
    started: list[Instance] = []

    def start(name: str, args: list[str], **settings: str) -> Instance:
        env = base_env(**settings)
        env["PYTHONPATH"] = str(ROOT)  # the tests' handlers module
        workdir = tmp_path / name
        workdir.mkdir()
        process = Instance(env, workdir / "relay.log", [sys.executable, "-m", "app", "worker", *args])
        started.append(process)
        return process.start(ready=False)  # a worker has no port: nothing to wait for

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def runner(worker: WorkerFactory, redis_url: str, prefix: str) -> WorkerFactory:
    """``runner(name, handler, **settings)``: ``relay worker run`` on channel tasks, group runners."""

    def start(name: str, handler: str, **settings: str) -> Instance:
        args = ["run", f"tests.integration.handlers:{handler}", "--channel", "tasks", "--group", "runners"]
        settings.setdefault("group_claim_idle_ms", "400")
        return worker(
            name,
            [*args, "--concurrency", "4", "--from", "0"],
            redis_url=redis_url,
            key_prefix=prefix,
            instance_name=f"{prefix}-{name}",
            **settings,
        )

    return start


def test_a_runner_loads_no_server(runner: WorkerFactory, redis_client: redis.Redis, prefix: str) -> None:
    """``relay worker run`` runs a broker, a hub and a group reader, and no uvicorn, Starlette or
    FastAPI: the layering (pyproject.toml, import-linter) holds in the process itself."""
    redis_client.xadd(f"{prefix}:{{tasks}}", {"data": '{"n": 1}'})
    runner("r1", "loaded_modules")  # a new group starts at 0: it takes the entry above
    wait_until(lambda: redis_client.exists(f"{prefix}:modules"), 20, "the handler to run")
    loaded = json.loads(redis_client.get(f"{prefix}:modules") or "[]")
    assert {"app.fanout.hub", "app.groups.reader", "workers.runner"} <= set(loaded)  # the real runner
    server = [name for name in loaded if name.split(".")[0] in {"uvicorn", "starlette", "fastapi"}]
    assert server + [name for name in loaded if name.startswith("app.server")] == []


def members_of(client: redis.Redis, key: str, group: str) -> set[str]:
    return {c["name"] for c in client.xinfo_consumers(key, group)}


async def test_a_failing_handler_gets_each_message_again_until_it_is_done(
    relay: RelayFactory, runner: WorkerFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay().start()
    ids = await publish_all(
        f"{a.ws}/ws/producer/tasks", [{"n": n, "fail_first": n % 3 == 0} for n in range(30)]
    )
    runner("r1", "flaky")
    wait_until(lambda: redis_client.scard(f"{prefix}:done") == 30, 20, "every message to be handled")
    assert redis_client.smembers(f"{prefix}:done") == set(ids)
    attempts = redis_client.hgetall(f"{prefix}:attempts")
    assert {i for i, n in attempts.items() if n == "2"} == {ids[n] for n in range(0, 30, 3)}
    wait_until(lambda: redis_client.xpending(f"{prefix}:{{tasks}}", "runners")["pending"] == 0, 5, "acks")


async def test_a_runner_killed_mid_batch_loses_nothing_while_another_runs(
    relay: RelayFactory, runner: WorkerFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay().start()
    first = runner("r1", "slow")
    runner("r2", "slow")
    ids = await publish_all(f"{a.ws}/ws/producer/tasks", [{"n": n} for n in range(200)])
    wait_until(lambda: redis_client.scard(f"{prefix}:done") >= 40, 20, "the runners to be busy")
    first.signal(signal.SIGKILL)  # mid-batch: it holds up to 4 messages it will never finish
    wait_until(
        lambda: redis_client.scard(f"{prefix}:done") == 200, 30, "the other runner to finish everything"
    )
    assert redis_client.smembers(f"{prefix}:done") == set(ids)


async def test_sigterm_lets_the_runner_finish_what_it_holds(
    relay: RelayFactory, runner: WorkerFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay().start()
    process = runner("r1", "slow", drain_timeout="5")
    ids = await publish_all(f"{a.ws}/ws/producer/tasks", [{"n": n, "seconds": 1} for n in range(4)])
    wait_until(lambda: redis_client.scard(f"{prefix}:started") == 4, 10, "all four to be in hand")
    started = time.monotonic()
    process.signal(signal.SIGTERM)
    assert process.wait_exit(10) == 0
    assert time.monotonic() - started < 5
    assert redis_client.smembers(f"{prefix}:done") == set(ids)
    assert redis_client.xpending(f"{prefix}:{{tasks}}", "runners")["pending"] == 0


async def test_the_janitor_removes_consumers_of_dead_processes_only(
    worker: WorkerFactory, redis_client: redis.Redis, redis_url: str, prefix: str
) -> None:
    key = f"{prefix}:{{queue}}"
    redis_client.xgroup_create(key, "g", id="0", mkstream=True)
    redis_client.xadd(key, {"data": "1"})
    redis_client.xreadgroup("g", "holder-gone", {key: ">"}, count=1)  # gone, but holds a message
    for name in ("gone-1", "gone-2", "alive-1"):
        redis_client.xreadgroup("g", name, {key: "0"}, count=1)  # creates the consumer, holds nothing
    redis_client.set(f"{prefix}:alive:alive-1", "1", px=60_000)
    assert members_of(redis_client, key, "g") == {"holder-gone", "gone-1", "gone-2", "alive-1"}

    janitor = worker(
        "janitor", ["janitor", "--once"], redis_url=redis_url, key_prefix=prefix, janitor_reap_idle_ms="0"
    )
    assert janitor.wait_exit(20) == 0
    assert members_of(redis_client, key, "g") == {"holder-gone", "alive-1"}
    assert "removed consumer 'gone-1'" in janitor.log()
    assert redis_client.xpending(key, "g")["pending"] == 1  # the message held by the gone one stays


async def test_two_janitors_share_the_work_without_doing_it_twice(
    worker: WorkerFactory, redis_client: redis.Redis, redis_url: str, prefix: str
) -> None:
    key = f"{prefix}:{{queue}}"
    redis_client.xgroup_create(key, "g", id="0", mkstream=True)
    redis_client.xadd(key, {"data": "1"})
    janitors = [
        worker(
            f"janitor-{n}",
            ["janitor"],
            redis_url=redis_url,
            key_prefix=prefix,
            janitor_interval="0.2",
            janitor_reap_idle_ms="0",
        )
        for n in range(2)
    ]
    for round_ in range(3):
        names = [f"gone-{round_}-{n}" for n in range(5)]
        for name in names:
            redis_client.xreadgroup("g", name, {key: "0"}, count=1)
        wait_until(
            lambda: not members_of(redis_client, key, "g"), 10, "the janitors to remove the dead consumers"
        )
    logs = [j.log() for j in janitors]
    assert sum(log.count("removed consumer") for log in logs) == 15  # each removal done once
    assert sum("holds the lease" in log for log in logs) >= 1
    assert all(j.process is not None and j.process.poll() is None for j in janitors)


async def test_the_janitor_applies_the_age_limit_to_quiet_channels(
    relay: RelayFactory, worker: WorkerFactory, redis_client: redis.Redis, redis_url: str, prefix: str
) -> None:
    a = relay(stream_max_age="1").start()
    old = await publish_all(f"{a.ws}/ws/producer/quiet", ["old", "older"])
    wait_until(
        lambda: int(redis_client.time()[0]) * 1000 > int(old[-1].split("-")[0]) + 1100,
        5,
        "the entries to age",
    )
    janitor = worker(
        "janitor", ["janitor", "--once"], redis_url=redis_url, key_prefix=prefix, stream_max_age="1"
    )
    assert janitor.wait_exit(20) == 0
    assert redis_client.xlen(f"{prefix}:{{quiet}}") == 0
    assert redis_client.get(f"{prefix}:{{quiet}}:trimmed") == old[-1]  # resuming consumers hear of the gap
    assert "removed 2 entries" in janitor.log()


async def test_a_message_no_handler_can_read_ends_in_the_dead_letters(
    relay: RelayFactory, runner: WorkerFactory, redis_client: redis.Redis, prefix: str
) -> None:
    key = f"{prefix}:{{tasks}}"
    bad = redis_client.xadd(key, {"data": "not json"})  # written by hand, not through the relay
    good = redis_client.xadd(key, {"data": '{"n": 1}'})
    runner("r1", "flaky", group_max_deliveries="2")
    wait_until(lambda: redis_client.xlen(f"{key}:dead") == 1, 20, "the unreadable message to be buried")
    assert redis_client.xrange(f"{key}:dead")[0][1]["id"] == bad
    wait_until(lambda: redis_client.sismember(f"{prefix}:done", good), 10, "the good one to be done")
