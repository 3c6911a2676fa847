"""A wake-up flag one task waits on and others set: cheaper than ``asyncio.Event`` per message."""

from __future__ import annotations

import asyncio


class Wakeup:
    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Return once ``set`` was called since the last return."""
        if not self._flag:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._flag = False
