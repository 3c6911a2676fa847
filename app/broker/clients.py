"""Redis clients as the broker uses them: one factory per kind of Redis.

=============  =====================================================================================
standalone     ``RELAY_REDIS_URL``: one server (a managed one may fail over behind its address)
sentinel       ``RELAY_REDIS_SENTINELS`` + ``RELAY_REDIS_SENTINEL_MASTER``: redis-py's Sentinel
               client; every new connection asks the sentinels for the master, and a connection to
               a master demoted to replica (``READONLY``) is dropped and made again
cluster        ``RELAY_REDIS_CLUSTER``: redis-py's ``RedisCluster``, which routes each command by its
               key's slot and follows ``MOVED``/``ASK``; Pub/Sub runs on one client per shard
               (:meth:`Clients.node`), see :mod:`app.broker.shards`
embedded       no address: an in-process fakeredis server
=============  =====================================================================================

A factory makes one client per role (``pub``, ``read``, ``sub``, ``janitor``), each over its own
bounded pool (on a cluster: per node), named ``relay:<instance>:<role>`` in ``CLIENT LIST``. Single
commands are retried by redis-py's ``Retry`` (the first of the two layers of retry; the second is
``app.backoff``), only where the caller asks: a write retried after a dropped connection might be
stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, cast
from urllib.parse import urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from app.errors import ConfigError
from app.settings import Settings


class Clients:
    """Makes the broker's clients for one kind of Redis."""

    sharded = False
    """Announcements go over sharded Pub/Sub (``SPUBLISH``/``SSUBSCRIBE``), one connection per shard."""

    def make(self, role: str, connections: int, retries: int, decode: bool, *, timed: bool = True) -> Redis:
        """A client for ``role`` with at most ``connections`` connections (per node). Untimed
        (``timed=False``): no socket timeout, the caller bounds every call itself (a
        :class:`~app.broker.line.Line`); a cluster's clients are always timed."""
        raise NotImplementedError

    def node(self, node: ClusterNode, role: str, decode: bool) -> Redis:
        """A one-connection client to one node of a cluster (its shard's Pub/Sub), made as the
        cluster client's own connections to it are (address, TLS, user and password)."""
        raise ConfigError("expected a Redis Cluster for a client per node")

    async def close(self) -> None:
        """Close what the factory itself holds (the sentinels' connections)."""


def for_settings(settings: Settings) -> Clients:
    """The clients for the topology the settings name (``Settings.topology``)."""
    topology = settings.topology
    if topology == "sentinel":
        return SentinelClients(settings)
    if topology == "cluster":
        return ClusterClients(settings)
    if topology == "standalone":
        return StandaloneClients(settings)
    return EmbeddedClients()


def _retry(retries: int) -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries, (redis_errors.ConnectionError,))


def _options(settings: Settings, role: str, retries: int, decode: bool, timed: bool = True) -> dict[str, Any]:
    return {
        "socket_timeout": settings.redis_timeout if timed else None,
        "socket_connect_timeout": settings.redis_timeout,
        "decode_responses": decode,
        "client_name": f"relay:{settings.instance_name}:{role}",
        # redis-py's check asks the loop for the time around every command and reply (a system
        # call each on Python 3.11: app.wakeup); where the caller bounds every exchange itself, a
        # ping would fail within the same bound as the command it precedes, for nothing
        "health_check_interval": 30 if timed else 0,
        "retry": _retry(retries),
    }


class StandaloneClients(Clients):
    def __init__(self, settings: Settings) -> None:
        if settings.redis_url is None:
            raise ConfigError("expected RELAY_REDIS_URL for a standalone Redis, got none")
        self._url = settings.redis_url.get_secret_value()
        self._settings = settings

    def make(self, role: str, connections: int, retries: int, decode: bool, *, timed: bool = True) -> Redis:
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=connections,
            timeout=self._settings.redis_timeout,
            **_options(self._settings, role, retries, decode, timed),
        )
        return Redis.from_pool(pool)


class _SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    """The master's connections, found through the sentinels; a caller over the bound waits for
    one (as with a standalone Redis) instead of failing."""


class SentinelClients(Clients):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        if settings.redis_sentinel_master is None:
            raise ConfigError("expected RELAY_REDIS_SENTINEL_MASTER with RELAY_REDIS_SENTINELS, got none")
        self._master = settings.redis_sentinel_master
        auth = _auth(settings)
        addresses = [_address(text) for text in settings.redis_sentinels]
        asking = {
            "socket_timeout": settings.redis_timeout,
            "socket_connect_timeout": settings.redis_timeout,
            # a sentinel that does not answer: the next one is asked at once, not after retries
            "retry": Retry(NoBackoff(), 0),
        }
        # the URL's user, password and database are the master's; the sentinels are asked with none
        self._sentinel = Sentinel(addresses, sentinel_kwargs=asking, **auth)  # type: ignore[no-untyped-call, unused-ignore]

    def make(self, role: str, connections: int, retries: int, decode: bool, *, timed: bool = True) -> Redis:
        client: Redis = self._sentinel.master_for(
            self._master,
            redis_class=Redis,
            connection_pool_class=_SentinelBlockingPool,
            max_connections=connections,
            timeout=self._settings.redis_timeout,
            **_options(self._settings, role, retries, decode, timed),
        )
        return client

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # a sentinel may be gone
            await asyncio.wait_for(self._sentinel.aclose(), self._settings.redis_timeout)


_HOLDING: ContextVar[bool] = ContextVar("relay_cluster_permit", default=False)


@contextlib.contextmanager
def self_bounded() -> Iterator[None]:
    """Calls to a cluster made inside take no permit: their caller bounds them itself (the
    publisher sends one pipeline per node at a time, on the node's one connection)."""
    token = _HOLDING.set(True)
    try:
        yield
    finally:
        _HOLDING.reset(token)


class _BoundedCluster(RedisCluster):
    """A cluster client whose callers wait for one of ``permits`` (as callers of a
    ``BlockingConnectionPool`` wait for a connection): redis-py's cluster client fails with
    ``MaxConnectionsError`` instead. A call made while holding one (a redirection the client
    follows by itself) takes none, so each node sees at most twice ``permits`` connections."""

    def __init__(self, *args: Any, permits: int, wait: float, **kwargs: Any) -> None:
        kwargs["max_connections"] = 2 * permits
        super().__init__(*args, **kwargs)
        self._permits = asyncio.Semaphore(permits)
        self._wait = wait

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await self.bounded(super().execute_command(*args, **kwargs))

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        return _BoundedPipeline(self, transaction)  # type: ignore[abstract]

    async def bounded(self, call: Any) -> Any:
        if _HOLDING.get():
            return await call
        try:
            async with asyncio.timeout(self._wait):  # as long as a blocking pool would wait
                await self._permits.acquire()
        except TimeoutError:
            call.close()  # never awaited
            raise redis_errors.ConnectionError(f"no connection free within {self._wait}s") from None
        try:
            token = _HOLDING.set(True)
            try:
                return await call
            finally:
                _HOLDING.reset(token)
        finally:
            self._permits.release()


class _BoundedPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client = cast(_BoundedCluster, self.cluster_client)
        result: list[Any] = await client.bounded(super().execute(raise_on_error, allow_redirections))
        return result


class ClusterClients(Clients):
    sharded = True

    def __init__(self, settings: Settings) -> None:
        if settings.redis_url is None:
            raise ConfigError("expected RELAY_REDIS_URL naming a node of the cluster, got none")
        self._url = settings.redis_url.get_secret_value()
        if urlsplit(self._url).path not in ("", "/", "/0"):
            raise ConfigError(f"a Redis Cluster has only database 0, got {settings.redis_url_for_display()}")
        self._settings = settings

    def make(self, role: str, connections: int, retries: int, decode: bool, *, timed: bool = True) -> Redis:
        options = _options(self._settings, role, retries, decode)  # pipelines: always timed
        options.pop("health_check_interval")
        client = _BoundedCluster.from_url(
            self._url,
            permits=connections,
            wait=self._settings.redis_timeout,
            require_full_coverage=True,
            **options,
        )
        # RedisCluster offers every command the broker sends with Redis's signatures, routed by slot
        return cast(Redis, client)

    def node(self, node: ClusterNode, role: str, decode: bool) -> Redis:
        options = {**node.connection_kwargs, **_options(self._settings, role, 0, decode)}
        options.pop("connection_pool", None)
        pool = BlockingConnectionPool(
            connection_class=node.connection_class,
            max_connections=1,
            timeout=self._settings.redis_timeout,
            **options,
        )
        return Redis.from_pool(pool)


class EmbeddedClients(Clients):
    """Clients of one in-process fakeredis server: one instance, nothing shared, nothing kept."""

    def __init__(self) -> None:
        import fakeredis

        self._server = fakeredis.FakeServer()

    def make(self, role: str, connections: int, retries: int, decode: bool, *, timed: bool = True) -> Redis:
        import fakeredis

        client: Redis = fakeredis.aioredis.FakeRedis(server=self._server, decode_responses=decode)
        return client


def _auth(settings: Settings) -> dict[str, Any]:
    """Database, user, password and TLS of ``RELAY_REDIS_URL`` (beside sentinels, only these
    count), decoded as redis-py decodes a URL."""
    if settings.redis_url is None:
        return {}
    parsed = parse_url(settings.redis_url.get_secret_value())
    auth: dict[str, Any] = {key: parsed[key] for key in ("username", "password", "db") if parsed.get(key)}
    if parsed.get("connection_class") is SSLConnection:
        auth["ssl"] = True
    return auth


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)
