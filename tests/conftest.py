from __future__ import annotations

import os
import resource
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support import Instance, RedisServer

REDIS_URL = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def pytest_configure(config: pytest.Config) -> None:
    # thousands of WebSocket clients in one test process
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"these tests need a Redis at {REDIS_URL} (scripts/test starts one): {exc}")
    return REDIS_URL


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5) as client:
        yield client


def base_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "REDIS_URL"}
    env.update(RELAY_DRAIN_GRACE="0", RELAY_LOG_LEVEL="info", PYTHONUNBUFFERED="1")
    env.update({f"RELAY_{key.upper()}": value for key, value in settings.items()})
    return env


RelayFactory = Callable[..., Instance]


@pytest.fixture
def relay(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[RelayFactory]:
    """``relay(**settings)`` makes a (not yet started) instance on the test's Redis and prefix."""
    made: list[Instance] = []

    def make(**settings: str) -> Instance:
        settings.setdefault("redis_url", redis_url)
        settings.setdefault("key_prefix", prefix)
        settings.setdefault("instance_name", f"{prefix}-{len(made)}")
        workdir = tmp_path / f"instance-{len(made)}"
        workdir.mkdir()
        instance = Instance(base_env(**settings), workdir / "relay.log")
        made.append(instance)
        return instance

    yield make
    for instance in made:
        instance.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (for stopping and restarting Redis)."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir)
    yield server
    server.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, attach the logs of the instances the test started."""
    report = yield
    if report.failed and call.when == "call":
        for path in sorted(Path(item.funcargs.get("tmp_path", "/nonexistent")).glob("*/relay.log")):
            report.sections.append(
                (f"relay log {path.parent.name}", path.read_text(errors="replace")[-4000:])
            )
    return report
