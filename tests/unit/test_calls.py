"""Which Redis errors mean "not now" (the caller gets ``unavailable`` and tries again)."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_errors

from app.broker.calls import describe, passing

PROTECTED = (
    "DENIED Redis is running in protected mode because protected mode is enabled and no password is "
    "set for the default user. In this mode connections are only accepted from the loopback interface. "
    "If you want to connect from external computers to Redis you may adopt one of the following "
    "solutions: 1) Just disable protected mode sending the command 'CONFIG SET protected-mode no' from "
    "the loopback interface by connecting to Redis from the same host the server is running, however "
    "MAKE SURE Redis is not publicly accessible from internet if you do so. Use CONFIG REWRITE to make "
    "this change permanent. 2) Alternatively you can just disable the protected mode by editing the "
    "Redis configuration file, and setting the protected mode option to 'no', and then restarting the "
    "server. 3) If you started the server manually just for testing, restart it with the "
    "'--protected-mode no' option. 4) Set up an authentication password for the default user. NOTE: "
    "You only need to do one of the above things in order for the server to start accepting "
    "connections from the outside."
)


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
        redis_errors.ResponseError(PROTECTED),
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


def test_a_long_refusal_is_described_by_its_first_sentence() -> None:
    assert describe(redis_errors.ResponseError(PROTECTED)) == (
        "ResponseError: DENIED Redis is running in protected mode because protected mode is enabled "
        "and no password is set for the default user."
    )


@pytest.mark.parametrize(
    ("text", "described"),
    [
        ("line one\nline two", "ConnectionError: line one line two"),
        ("x" * 500, "ConnectionError: " + "x" * 199 + "…"),
        ("", "ConnectionError"),
        (
            "Error 111 connecting to redis:6379. Connection refused.",
            "ConnectionError: Error 111 connecting to redis:6379. Connection refused.",
        ),
    ],
)
def test_an_error_is_described_on_one_short_line(text: str, described: str) -> None:
    assert describe(redis_errors.ConnectionError(text)) == described
