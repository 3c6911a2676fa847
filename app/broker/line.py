"""One connection held by one writer: its commands go out in one write, their replies are read in
order, all under one deadline.

The publisher sends a round trip per batch and nothing else uses its connection, so the pool,
redis-py's pipeline object and the per-command bookkeeping they bring (a lock and a readiness
check to take the connection, a timer per reply, a task per write, a result callback per command)
are work done again for every batch to no purpose: at one small message per batch, as on an
instance with many quiet channels, they were most of what publishing cost
(``docs/performance.md``, "Many channels"). The connection is still redis-py's: it connects,
authenticates, asks the sentinels for the master, health-checks after a quiet spell and drops
itself on any failure (the next round trip connects again).

The client given must have no socket timeout (``Clients.make(..., timed=False)``): the deadline is
the round trip's, connecting included, and an expired one leaves no reply behind, because redis-py
disconnects a connection whose read was interrupted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection


class Line:
    def __init__(self, client: Redis, timeout: float) -> None:
        self._pool = client.connection_pool
        self._timeout = timeout
        self._connection: AbstractConnection | None = None
        self._lock = asyncio.Lock()  # one round trip at a time: replies are matched by order

    async def round_trip(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Each command's reply, in order; an error reply is its exception, in its place. Raises
        ``ConnectionError`` (redis-py's) or ``TimeoutError`` when the connection failed or the
        deadline passed: then each command may or may not have run."""
        async with self._lock, asyncio.timeout(self._timeout):
            connection = self._connection
            if connection is None:
                connection = self._connection = await self._pool.get_connection()  # type: ignore[no-untyped-call, unused-ignore]
            try:
                return await self._exchange(connection, commands)
            except BaseException:
                # whatever was cut short (a handshake, a write, a read) must not leave a reply
                # behind for the next round trip to take as its own
                await connection.disconnect(nowait=True)
                raise

    @staticmethod
    async def _exchange(connection: AbstractConnection, commands: Sequence[Sequence[Any]]) -> list[Any]:
        if not connection.is_connected:
            # connect() itself, not the write's own reconnect: a Sentinel-managed connection asks
            # the sentinels where the master is now only there
            await connection.connect()  # type: ignore[no-untyped-call, unused-ignore]
        await connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except redis_errors.ResponseError as exc:  # the reply itself: the connection is fine
                replies.append(exc)
        return replies

    async def close(self) -> None:
        """Give the connection back to its pool (whose closing disconnects it)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool.release(connection)
