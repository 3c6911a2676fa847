"""Redis clients as the broker uses them: one factory per kind of Redis.

A factory makes one client per role (``pub``, ``read``, ``sub``, ``janitor``), each over its own
bounded pool, named ``relay:<instance>:<role>`` in ``CLIENT LIST``. Single commands are retried by
redis-py's ``Retry`` (the first of the two layers of retry; the second is ``app.backoff``), only
where the caller asks: a write retried after a dropped connection might be stored twice.
"""

from __future__ import annotations

from collections.abc import Callable

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from app.errors import ConfigError
from app.settings import Settings

ClientFactory = Callable[[str, int, int, bool], Redis]
"""``(role, max connections, retries, decode responses) -> client``."""


def for_settings(settings: Settings) -> ClientFactory:
    """The embedded Redis when no address is set, else the one ``RELAY_REDIS_URL`` names."""
    return embedded() if settings.embedded else standalone(settings)


def standalone(settings: Settings) -> ClientFactory:
    if settings.redis_url is None:
        raise ConfigError("expected RELAY_REDIS_URL for a standalone Redis, got none")
    url = settings.redis_url.get_secret_value()

    def make(role: str, connections: int, retries: int, decode: bool) -> Redis:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=connections,
            timeout=settings.redis_timeout,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            decode_responses=decode,
            client_name=f"relay:{settings.instance_name}:{role}",
            health_check_interval=30,
            retry=Retry(
                ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries, (redis_errors.ConnectionError,)
            ),
        )
        return Redis.from_pool(pool)

    return make


def embedded() -> ClientFactory:
    """Clients of one in-process fakeredis server: one instance, nothing shared, nothing kept."""
    import fakeredis

    server = fakeredis.FakeServer()

    def make(role: str, connections: int, retries: int, decode: bool) -> Redis:
        client: Redis = fakeredis.aioredis.FakeRedis(server=server, decode_responses=decode)
        return client

    return make
