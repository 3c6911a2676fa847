"""One Redis call as the broker makes it: timed per operation, its failures in the relay's terms.

``redis-py`` raises connection errors, timeouts and ``ResponseError``; the rest of the relay only
ever sees :class:`~app.errors.BrokerUnavailable` (not known to be done: try again later; also for
answers that mean "not now", such as ``READONLY`` or ``TRYAGAIN`` during a failover or a
resharding) and :class:`~app.errors.StorageError` (Redis refused), and
:class:`~app.errors.GroupMissing` for a consumer group that is gone.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Final, TypeVar

from redis import exceptions as redis_errors

from app import metrics
from app.errors import BrokerUnavailable, GroupMissing, StorageError

T = TypeVar("T")

UNAVAILABLE: Final = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.RedisClusterException,  # no node of the cluster answers, a slot not covered now
    OSError,
    TimeoutError,
)


# DENIED: a Redis in protected mode refuses whoever is not on its loopback: a setting to fix there,
# after which the same request succeeds
_PASSING: Final = frozenset(
    {"READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY", "DENIED"}
)
_PASSING_TYPES: Final = (
    redis_errors.ClusterError,  # "TTL exhausted": redirected too often, a slot on the move
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.AskError,  # and MovedError: a slot on its way to another shard
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
    redis_errors.ReadOnlyError,
)


def passing(error: redis_errors.RedisError) -> bool:
    """An error that says "not now" (a failover, a restart, a slot moving), not "never"."""
    return str(error).split(" ", 1)[0] in _PASSING or isinstance(error, _PASSING_TYPES)


async def checked(awaitable: Awaitable[T], operation: str) -> T:
    """Await a Redis call, timed per ``operation``, turning its failures into the broker's errors."""
    started = time.perf_counter()
    try:
        return await awaitable
    except UNAVAILABLE as exc:
        metrics.REDIS_ERRORS.labels(operation).inc()
        raise BrokerUnavailable(f"Redis did not answer: {describe(exc)}") from exc
    except redis_errors.RedisError as exc:
        metrics.REDIS_ERRORS.labels(operation).inc()
        if passing(exc):
            raise BrokerUnavailable(f"Redis cannot answer now: {describe(exc)}") from exc
        raise StorageError(f"Redis refused: {describe(exc)}") from exc
    finally:
        metrics.REDIS_LATENCY.labels(operation).observe(time.perf_counter() - started)


async def group_call(awaitable: Awaitable[T], operation: str) -> T:
    """A consumer-group command: a missing group (deleted, or Redis restarted empty) is GroupMissing."""
    try:
        return await checked(awaitable, operation)
    except StorageError as exc:
        if "NOGROUP" in str(exc):
            raise GroupMissing(f"the consumer group does not exist: {exc}") from exc
        raise


_DESCRIBED: Final = 200  # characters of an error's text that go into a log line or a reply


def describe(exc: BaseException) -> str:
    """``Type: text`` on one line: Redis explains some refusals at length (protected mode takes a
    thousand characters), and every retry would log it all; its first sentence says what it is."""
    text = " ".join(str(exc).split())
    if len(text) > _DESCRIBED:
        first = text.find(". ") + 1
        text = text[:first] if 0 < first <= _DESCRIBED else text[: _DESCRIBED - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
