"""The broker and the hub on every Redis flavour: the embedded fakeredis, a real Redis, and a
three-shard Redis Cluster of the suite's own (sharded Pub/Sub, keys spread over the shards)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from app.broker import clients
from app.broker.housekeeping import RedisHousekeeping
from app.broker.interface import Entry
from app.broker.streams import RedisBroker
from app.errors import BrokerUnavailable
from app.settings import Settings
from tests.support import timeout
from tests.topologies import ClusterSet


class Recorder:
    """A broker listener that keeps what it is told."""

    def __init__(self) -> None:
        self.announcements: list[tuple[str, str, list[Entry]]] = []
        self.presence: list[tuple[str, str, str]] = []  # (channel, client, frame)
        self.resubscribed = 0
        self.changed = asyncio.Event()

    def on_announcement(self, channel: str, prev: str, entries: list[Entry]) -> None:
        self.announcements.append((channel, prev, entries))
        self.changed.set()

    def on_presence(self, channel: str, client: str, frame: str) -> None:
        self.presence.append((channel, client, frame))
        self.changed.set()

    def on_resubscribed(self) -> None:
        self.resubscribed += 1
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5) -> None:
        async with asyncio.timeout(timeout(within)):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


BrokerFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    with ClusterSet(tmp_path_factory.mktemp("contract-cluster")).start() as topology:
        yield topology


@pytest.fixture(params=["embedded", "redis", "cluster"])
def settings_for(request: pytest.FixtureRequest, prefix: str) -> Callable[..., Settings]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    topology: dict[str, Any] = {}
    if request.param == "cluster":
        topology = {"redis_url": request.getfixturevalue("cluster").url, "redis_cluster": True}

    def make(**overrides: Any) -> Settings:
        options = {"redis_url": url, "key_prefix": prefix, **topology, **overrides}
        return Settings(_env_file=None, **options)  # type: ignore[call-arg]

    return make


@pytest.fixture
async def open_broker(settings_for: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    """``await open_broker(listener, **settings)``: a started broker whose Pub/Sub is connected.
    ``listener`` may also be a function of the broker that returns the listener (e.g. a Hub)."""
    opened: list[RedisBroker | RedisHousekeeping] = []

    async def make(listener: Any, **overrides: Any) -> RedisBroker:
        settings = settings_for(**overrides)
        factory = clients.for_settings(settings)
        broker = RedisBroker(settings, factory)
        keeper = RedisHousekeeping(settings, factory)  # the janitor's part, on the same Redis
        broker.housekeeping = keeper  # type: ignore[attr-defined]
        opened.extend((broker, keeper))
        await broker.start(listener(broker) if callable(listener) else listener)
        async with asyncio.timeout(timeout(5)):
            while True:
                try:
                    await broker.ping()
                    return broker
                except BrokerUnavailable:
                    await asyncio.sleep(0.02)  # the Pub/Sub connection comes up in the background

    yield make
    for broker in opened:
        await broker.close()


def raw(broker: RedisBroker) -> Redis:
    """The broker's own read client, for setting up situations only a third party creates."""
    client: Redis = broker._read
    return client


def housekeeping(broker: RedisBroker) -> RedisHousekeeping:
    """The janitor's part of the broker (``RedisHousekeeping``) on the same Redis, embedded or not."""
    keeper: RedisHousekeeping = broker.housekeeping  # type: ignore[attr-defined]
    return keeper
