"""Pages of a stream as catching-up consumers are sent them: read once, framed once, shared.

Consumers that resume from the same id (a resume storm: a deployment restarts and every client
comes back with ``from=<the id it saw last>``) ask for the same pages. :class:`PageSource` reads
each page from Redis once, builds its frames once, and hands both to every consumer asking for it,
including those that ask while the read is under way. Only full pages are kept (``PAGE`` entries:
nothing can be added to them later), only those read with nothing lost before them, and only for
``keep_for`` seconds (a storm is over within a minute): within that time a shared page may still hold
entries retention has since removed, and hands them over rather than a gap, as a read made a
moment earlier would have. The least recently used go first beyond ``max_bytes``; a channel no
longer followed keeps nothing.

Each consumer still gets what its own position asks for: entries after its ``after``, none past
its ``until`` (what follows comes from its live buffer), and the gap it must report.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

from app.broker.interface import Page
from app.fanout.sink import Frame
from app.protocol import frames, streamid
from app.protocol.streamid import StreamId

PAGE: Final = 500
_OVERHEAD: Final = 400  # bytes per entry beside its frame's text and bytes: ids, objects


class Reader(Protocol):
    """Reads a channel's stream (:meth:`app.broker.interface.Follower.read`)."""

    def __call__(
        self, channel: str, after: StreamId, *, until: StreamId | None, count: int, report_gap: bool = True
    ) -> Awaitable[Page]: ...


@dataclass(frozen=True, slots=True)
class FramedPage:
    """Entries in stream order (``PAGE`` at most) with the frame of each."""

    ids: list[StreamId]
    entry_ids: list[str]
    frames: list[Frame]
    lost_until: StreamId | None = None
    size: int = 0

    @property
    def full(self) -> bool:
        return len(self.ids) == PAGE

    def until(self, last: StreamId | None) -> FramedPage:
        """The part up to ``last`` (all of it for None)."""
        if last is None or not self.ids or self.ids[-1] <= last:
            return self
        end = bisect.bisect_right(self.ids, last)
        return FramedPage(self.ids[:end], self.entry_ids[:end], self.frames[:end], self.lost_until)


def framed(channel: str, page: Page) -> FramedPage:
    ids, entry_ids, built = [], [], []
    size = 0
    for entry_id, data in page.entries:
        ids.append(streamid.parse(entry_id))
        entry_ids.append(entry_id)
        frame = Frame(frames.message(entry_id, channel, data))
        built.append(frame)
        size += sys.getsizeof(frame.text) + len(frame.data) + _OVERHEAD  # in bytes, any script
    return FramedPage(ids, entry_ids, built, page.lost_until, size)


class PageSource:
    """Reads pages for catching-up subscriptions through a shared, bounded cache."""

    def __init__(
        self,
        read: Reader,
        *,
        max_bytes: int = 32 * 1024 * 1024,
        keep_for: float = 60.0,
        followed: Callable[[str], bool] = lambda channel: True,
    ) -> None:
        self._read = read
        self._max_bytes = max_bytes
        self._keep_for = keep_for
        self._followed = followed
        self._pages: OrderedDict[tuple[str, StreamId], tuple[FramedPage, float]] = OrderedDict()
        self._reading: dict[tuple[str, StreamId], asyncio.Task[FramedPage]] = {}
        self._bytes = 0
        self.reads = 0  # pages read from Redis (for tests and metrics)

    async def read(
        self, channel: str, after: StreamId, *, until: StreamId, report_gap: bool = True
    ) -> FramedPage:
        """Entries after ``after`` up to ``until``: fewer than ``PAGE`` when that is all of them."""
        if report_gap:  # a read that may skip a gap is not one to share
            key = (channel, after)
            kept = self._pages.get(key)
            if kept is not None:
                if kept[1] > time.monotonic():
                    self._pages.move_to_end(key)
                    return kept[0].until(until)
                self._drop(key)
            task = self._reading.get(key)
            if task is None:
                task = asyncio.create_task(self._fetch(channel, after, None, report_gap=True))
                self._reading[key] = task
                task.add_done_callback(functools.partial(self._fetched, key))
            page = await asyncio.shield(task)  # this consumer leaving does not stop the read
            # a short page covers ``until`` only if it reaches it: the read may have begun before
            # this consumer's ``until`` was appended
            if page.full or (page.ids and page.ids[-1] >= until):
                return page.until(until)
        return await self._fetch(channel, after, until, report_gap=report_gap)

    def _fetched(self, key: tuple[str, StreamId], task: asyncio.Task[FramedPage]) -> None:
        if self._reading.get(key) is task:
            del self._reading[key]
        if task.cancelled() or task.exception() is not None:  # retrieved: each waiter has it raised
            return
        page = task.result()
        if page.full and page.lost_until is None and self._followed(key[0]):
            self._keep(key, page)

    async def _fetch(
        self, channel: str, after: StreamId, until: StreamId | None, *, report_gap: bool
    ) -> FramedPage:
        self.reads += 1
        page = await self._read(channel, after, until=until, count=PAGE, report_gap=report_gap)
        return framed(channel, page)

    def _keep(self, key: tuple[str, StreamId], page: FramedPage) -> None:
        if page.size > self._max_bytes:
            return
        if key in self._pages:
            self._drop(key)
        self._pages[key] = (page, time.monotonic() + self._keep_for)
        self._bytes += page.size
        while self._bytes > self._max_bytes:
            _, (dropped, _expiry) = self._pages.popitem(last=False)
            self._bytes -= dropped.size

    def _drop(self, key: tuple[str, StreamId]) -> None:
        self._bytes -= self._pages.pop(key)[0].size

    @property
    def kept_bytes(self) -> int:
        return self._bytes

    def forget(self, channel: str) -> None:
        """The channel is no longer followed here: let its pages go."""
        for key in [key for key in self._pages if key[0] == channel]:
            self._drop(key)
