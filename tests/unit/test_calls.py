"""Which Redis errors mean "not now" (the caller gets ``unavailable`` and tries again)."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_errors

from app.broker.calls import passing


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.ReadOnlyError("You can't write against a read only replica."),
        redis_errors.ResponseError("LOADING Redis is loading the dataset in memory"),
        redis_errors.ResponseError("MASTERDOWN Link with MASTER is down"),
        redis_errors.ResponseError("BUSY Redis is busy running a script"),
        redis_errors.TryAgainError("Multiple keys request during rehashing of slot"),
        redis_errors.MovedError("3999 127.0.0.1:6381"),
        redis_errors.AskError("3999 127.0.0.1:6381"),
        redis_errors.ClusterDownError("The cluster is down"),
        redis_errors.ClusterError("TTL exhausted."),
        redis_errors.ConnectionError("Connection closed by server."),
    ],
)
def test_a_failover_or_a_moving_slot_is_not_now(error: redis_errors.RedisError) -> None:
    assert passing(error)


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.ResponseError("BUSYGROUP Consumer Group name already exists"),
        redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        redis_errors.ResponseError("NOGROUP No such key or consumer group"),
        redis_errors.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
    ],
)
def test_a_refusal_is_not_passing(error: redis_errors.RedisError) -> None:
    assert not passing(error)
