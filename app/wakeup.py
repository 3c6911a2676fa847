"""Wake-ups lighter than ``asyncio.Event``: a flag one task waits on and others set, and a gate.

A ``Wakeup`` keeps the loop it first waited on: on Python 3.11, ``asyncio.get_running_loop()`` makes a
system call (``getpid``, its check for a fork) every time, and a producer's wake-ups run for every
message it sends (``docs/performance.md``, "Many channels").
"""

from __future__ import annotations

import asyncio


class Wakeup:
    __slots__ = ("_flag", "_loop", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    __call__ = set  # the wake-up is its own callback: no bound method kept per subscriber

    async def wait(self) -> None:
        """Return once ``set`` was called since the last return."""
        if not self._flag:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._flag = False


class Gate:
    """What uvicorn's WebSocket protocol uses of ``asyncio.Event`` (``set``, ``clear``, ``is_set``,
    ``wait``, for any number of waiters), without its deque: 0.7 KB less per connection. Starts set.

    As with ``asyncio.Event``, a ``wait`` woken by ``set`` returns even if ``clear`` came after."""

    __slots__ = ("_open", "_waiters")

    def __init__(self) -> None:
        self._open = True
        self._waiters: list[asyncio.Future[None]] | None = None  # made by the first wait on a closed gate

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        self._open = True
        if self._waiters is not None:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def clear(self) -> None:
        self._open = False

    async def wait(self) -> bool:
        if self._open:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)
            if not self._waiters:
                self._waiters = None
