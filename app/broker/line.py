"""One connection held by one writer: its commands go out in one write, their replies are read in
order, all under one deadline.

The publisher sends a round trip per batch and nothing else uses its connection, so the pool,
redis-py's pipeline object and the per-command bookkeeping they bring (a lock and a readiness
check to take the connection, a timer per reply, a task per write, a result callback per command)
are work done again for every batch to no purpose: at one small message per batch, as on an
instance with many quiet channels, they were most of what publishing cost
(``docs/performance.md``, "Many channels"). The connection is still redis-py's: it connects,
authenticates, asks the sentinels for the master and drops itself on any failure (the next round
trip connects again); a connection the server closed while it sat idle is made again before a round
trip (no health-check ping: it would fall under the round trip's deadline anyway).

The client given must have no socket timeout (``Clients.make(..., timed=False)``): the deadline is
the round trip's (connecting has one of its own), and an expired one leaves no reply behind: a
round trip cut short disconnects its connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

from hiredis import pack_command
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection


class Line:
    def __init__(self, client: Redis, timeout: float, *, connect_timeout: float | None = None) -> None:
        self._pool = client.connection_pool
        self._timeout = timeout
        # connecting has a bound of its own: behind sentinels it asks them in turn, each within
        # the connect timeout, and one that hangs must not take the whole of a round trip's
        self._connect_timeout = connect_timeout or timeout
        self._connection: AbstractConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()  # one round trip at a time: replies are matched by order

    async def round_trip(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Each command's reply, in order; an error reply is its exception, in its place. Raises
        ``ConnectionError`` (redis-py's) or ``TimeoutError`` when the connection failed or a
        deadline passed: then each command may or may not have run."""
        async with self._lock:
            connection = self._connection
            if connection is None:
                async with asyncio.timeout(self._connect_timeout):
                    connection = self._connection = await self._pool.get_connection()  # type: ignore[no-untyped-call, unused-ignore]
            try:
                await self._ready(connection)
                return await self._within_deadline(self._exchange(connection, commands))
            except BaseException:
                # whatever was cut short (a handshake, a write, a read) must not leave a reply
                # behind for the next round trip to take as its own
                await connection.disconnect(nowait=True)
                raise

    async def _within_deadline(self, exchange: Coroutine[Any, Any, list[Any]]) -> list[Any]:
        """``exchange`` under the round trip's deadline: TimeoutError when it passes.

        What ``asyncio.timeout`` does, on the loop the line keeps: that one asks for the running
        loop three times (a system call each on Python 3.11, ``app.wakeup``), and it runs for
        every batch."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        cancelling = task.cancelling()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = loop.call_later(self._timeout, expire)
        try:
            return await exchange
        except BaseException as exc:
            # our cancel taken back, however the exchange ended; a CancelledError that was ours
            # alone (nobody else cancelled the task meanwhile) is the deadline passing
            if expired and task.uncancel() <= cancelling and isinstance(exc, asyncio.CancelledError):
                raise TimeoutError(f"no reply within {self._timeout:g}s") from None
            raise
        finally:
            timer.cancel()

    async def _ready(self, connection: AbstractConnection) -> None:
        """Connected, on a connection with nothing left to read: one the server closed while it
        sat idle (a restart, Redis's idle ``timeout``, a proxy, a sentinel reconfiguring) is made
        again before anything is sent, as the pool does when it hands a connection out."""
        if connection.is_connected:
            try:
                stale = await connection.can_read()  # no system call: what the reader already saw
            except (redis_errors.ConnectionError, OSError):
                stale = True
            if not stale:
                return
            await connection.disconnect(nowait=True)
        async with asyncio.timeout(self._connect_timeout):
            # connect() itself, not the write's own reconnect: a Sentinel-managed connection asks
            # the sentinels where the master is now only there
            await connection.connect()  # type: ignore[no-untyped-call, unused-ignore]

    @staticmethod
    async def _exchange(connection: AbstractConnection, commands: Sequence[Sequence[Any]]) -> list[Any]:
        # hiredis packs each command in C; redis-py's own packing encodes every argument in Python
        # first, 8 µs a script call against 2 here (docs/performance.md, "Many channels")
        packed = b"".join([pack_command(tuple(command)) for command in commands])  # one write, not a writev
        await connection.send_packed_command(packed, check_health=False)
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
