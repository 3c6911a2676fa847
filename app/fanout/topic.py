"""One channel this instance follows: the id of the last entry it passed on, and its state.

Each announcement names the entry before its own (``prev``); a topic that passed on ``last``
fans out an announcement with ``prev <= last`` at once, and reads the stream after ``last`` for
anything else, holding later announcements in order meanwhile. Its states (``docs/design.md``,
"Topic states"):

::

    STARTING ── started() ─────────▶ FILLING ── read done, nothing owed ──▶ FOLLOWING
       │                             ▲   │  ▲                                  │   │
       │                 the read    │   │  └─── an announcement after a hole ──┘   │
       │ resync()        begins      │   │ resync(), too much held                 │ resync()
       └──────────────▶ RESYNCING ───┘ ◀─┘ ◀───────────────────────────────────────┘
                        (started() leaves it RESYNCING)         close(), from any state: CLOSED

- ``STARTING``: following was asked for; the channel's position is not known yet. Announcements
  are held.
- ``FOLLOWING``: every announcement continues from ``last`` and is delivered as it arrives.
- ``FILLING``: an announcement came after a hole, or the topic just started: the stream is read
  after ``last`` to the end, then the held announcements are released in order.
- ``RESYNCING``: announcements may have been lost (the Pub/Sub connection came back, or more was
  held than a topic keeps): a read of everything after ``last`` is owed. It becomes ``FILLING``
  when that read begins; one that fails leaves it owed, and it is tried again with backoff.
- ``CLOSED``: no consumer left; nothing more is delivered.

An announcement held from before a read that reached the end of the stream, and still beyond
``last`` after it, names entries the stream no longer holds (deleted, or lost in a failover): it is
delivered as it is, after a gap frame to each consumer, rather than waited on forever.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from app import metrics
from app.backoff import Backoff
from app.broker.interface import Entry
from app.errors import BrokerError
from app.fanout.pages import PAGE, Reader
from app.fanout.sink import Frame
from app.fanout.subscription import Subscription
from app.protocol import frames, streamid
from app.protocol.streamid import StreamId

log = logging.getLogger("relay.hub")
_observe_latency = metrics.FANOUT_LATENCY.observe
_count_delivered = metrics.DELIVERED.inc

HELD_ENTRIES: Final = 10_000  # announced entries held per topic while it reads; beyond, read again
HELD_BYTES: Final = 8 * 1024 * 1024


class TopicState(enum.Enum):
    STARTING = "starting"
    FOLLOWING = "following"
    FILLING = "filling"
    RESYNCING = "resyncing"
    CLOSED = "closed"


class Held:
    """Announcements held while a topic reads, in arrival order, bounded in entries and bytes.

    Its queue exists only while something is held: most topics never hold anything."""

    __slots__ = ("_bytes", "_covered", "_entries", "_items")

    def __init__(self) -> None:
        self._items: deque[tuple[StreamId, list[Entry]]] | None = None
        self._entries = 0
        self._bytes = 0
        self._covered = 0  # how many at the head were held before the last read to the end began

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, prev: StreamId, entries: list[Entry]) -> bool:
        """Hold one more; False (and nothing held any more) when that is more than a topic keeps."""
        self._entries += len(entries)
        self._bytes += sum(len(data) for _, data in entries)
        if self._entries > HELD_ENTRIES or self._bytes > HELD_BYTES:
            self.clear()
            return False
        if self._items is None:
            self._items = deque()
        self._items.append((prev, entries))
        return True

    def first_prev(self) -> StreamId:
        assert self._items
        return self._items[0][0]

    @property
    def covered(self) -> bool:
        """Whether the first one was held before the last read to the end began."""
        return self._covered > 0

    def mark(self) -> None:
        """A read to the end begins: everything held now was stored before what it will read."""
        self._covered = len(self._items) if self._items else 0

    def pop(self) -> list[Entry]:
        assert self._items
        _, entries = self._items.popleft()
        if not self._items:
            self._items = None
        self._entries -= len(entries)
        self._bytes -= sum(len(data) for _, data in entries)
        self._covered = max(0, self._covered - 1)
        return entries

    def clear(self) -> None:
        self._items = None
        self._entries = self._bytes = self._covered = 0


class Topic:
    """One followed channel: built by the hub, which adds and removes its consumers."""

    __slots__ = (
        "_fill",
        "_held",
        "_read",
        "_ready",
        "_subs",
        "_waiters",
        "_watchers",
        "channel",
        "last",
        "state",
    )

    def __init__(self, channel: str, read: Reader) -> None:
        self.channel = channel
        self.state = TopicState.STARTING
        self.last: StreamId | None = None  # id of the last entry passed on; None while STARTING
        self._read = read
        self._subs: set[Subscription] = set()
        self._watchers: set[Callable[[], None]] | None = None  # told of new entries (consumer groups)
        self._waiters = 0
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held = Held()
        self._fill: asyncio.Task[None] | None = None

    # -- who follows it ---------------------------------------------------------------------------

    @property
    def unused(self) -> bool:
        """No consumer, no watcher, and nobody waiting for the position."""
        return not self._subs and not self._watchers and self._waiters == 0

    def add(self, sub: Subscription) -> None:
        self._subs.add(sub)

    def discard(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def watch(self, watcher: Callable[[], None]) -> None:
        if self._watchers is None:
            self._watchers = set()
        self._watchers.add(watcher)

    def unwatch(self, watcher: Callable[[], None]) -> None:
        if self._watchers is not None:
            self._watchers.discard(watcher)
            if not self._watchers:
                self._watchers = None

    def buffered(self) -> int:
        return sum(sub.buffered for sub in self._subs)

    async def position(self) -> StreamId:
        """The id of the last entry passed on, once known (raises BrokerError if following failed)."""
        if self.last is None:
            self._waiters += 1
            try:
                await asyncio.shield(self._ready)
            finally:
                self._waiters -= 1
        assert self.last is not None  # set before _ready is
        return self.last

    def when_positioned(self, callback: Callable[[BrokerError | None], None]) -> None:
        """``position`` as a callback: ``callback(None)`` once the position is known, or
        ``callback(error)`` if following failed; the topic counts as used until then."""
        self._waiters += 1

        def done(ready: asyncio.Future[None]) -> None:
            self._waiters -= 1
            error = ready.exception()  # never cancelled; failed() sets a BrokerError
            assert error is None or isinstance(error, BrokerError)
            callback(error)

        self._ready.add_done_callback(done)

    # -- what the hub tells it --------------------------------------------------------------------

    def started(self, last: StreamId) -> None:
        """Following is active and ``last`` was the stream's last entry then."""
        if self.state is TopicState.CLOSED or self._ready.done():
            return
        self.last = last
        self._ready.set_result(None)
        if self.state is TopicState.STARTING:
            self.state = TopicState.FILLING  # deliver what was announced meanwhile
        self._start_fill()

    def failed(self, error: BrokerError) -> None:
        """Following could not start: whoever waits for the position gets ``error``."""
        if not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # marked as retrieved: there may be no waiter left

    def on_announcement(self, prev: StreamId, entries: list[Entry]) -> None:
        state = self.state
        if state is TopicState.FOLLOWING:
            assert self.last is not None
            if prev <= self.last:
                self._deliver(entries)
                return
            self.state = TopicState.FILLING
            self._hold(prev, entries)
            self._start_fill()
        elif state is not TopicState.CLOSED:
            self._hold(prev, entries)

    def resync(self) -> None:
        """Announcements may have been lost: read the stream after ``last`` (once it is known)."""
        if self.state is TopicState.CLOSED:
            return
        self.state = TopicState.RESYNCING
        if self.last is not None:
            self._start_fill()

    def close(self) -> None:
        self.state = TopicState.CLOSED
        if self._fill is not None:
            self._fill.cancel()
        self.failed(BrokerError(f"channel {self.channel!r} is no longer followed"))

    # -- delivering -------------------------------------------------------------------------------

    def _hold(self, prev: StreamId, entries: list[Entry]) -> None:
        if not self._held.add(prev, entries):
            self.state = TopicState.RESYNCING  # the stream has them all: read it instead of holding more

    def _deliver(self, entries: list[Entry]) -> None:
        last = self.last
        assert last is not None
        channel = self.channel
        subs = self._subs
        now_ms = time.time() * 1000
        written = 0
        for entry_id, data in entries:
            sid = streamid.parse(entry_id)
            if sid <= last:
                continue
            self.last = last = sid  # kept current: a malformed id later in the batch stops here
            frame = Frame(frames.message(entry_id, channel, data))
            for sub in subs:
                written += sub.push(sid, frame)
            _observe_latency((now_ms - sid[0]) / 1000)
        if written:
            _count_delivered(written)  # the rest is counted by each connection's writer
        self._notify()

    def _notify(self) -> None:
        if self._watchers is not None:
            for watcher in self._watchers:
                watcher()

    # -- filling ----------------------------------------------------------------------------------

    def _start_fill(self) -> None:
        if self._fill is None or self._fill.done():
            self._fill = asyncio.create_task(self._filling(), name=f"relay-fill-{self.channel}")
            self._fill.add_done_callback(self._filled)

    def _filled(self, task: asyncio.Task[None]) -> None:
        if self._fill is task:
            self._fill = None  # a finished task is not kept for the topic's life

    async def _filling(self) -> None:
        backoff = Backoff()
        while self.state is not TopicState.CLOSED:
            try:
                if await self._fill_once():
                    return
                backoff.reset()
            except Exception as exc:  # Redis away, or an entry we cannot parse: never stop following
                log.warning("reading channel %r failed (%s); retrying", self.channel, exc)
                await backoff.wait()

    async def _fill_once(self) -> bool:
        """Read the stream if something was missed, then release what is held; True once FOLLOWING."""
        assert self.last is not None
        if self.state is TopicState.RESYNCING or (self._held and self._held.first_prev() > self.last):
            self.state = TopicState.FILLING
            self._held.mark()
            try:
                await self._read_to_end()
            except BaseException:
                if self.state is not TopicState.CLOSED:
                    self.state = TopicState.RESYNCING  # the read did not happen: still owed
                raise
        if not self._release() or self.state is not TopicState.FILLING:
            return False
        self.state = TopicState.FOLLOWING
        return True

    def _release(self) -> bool:
        """Deliver held announcements that continue from ``last``; False at a hole still to read."""
        held = self._held
        while held:
            assert self.last is not None
            prev = held.first_prev()
            if prev > self.last:
                if not held.covered:
                    return False
                log.warning("channel %r: entries up to %s vanished from the stream", self.channel, prev)
                for sub in self._subs:
                    sub.push_loss()  # each consumer gets a gap frame before what follows
            self._deliver(held.pop())
        return True

    async def _read_to_end(self) -> None:
        while True:
            after = self.last
            assert after is not None
            page = await self._read(self.channel, after, until=None, count=PAGE)
            entries = page.entries
            if page.lost_until is not None:
                # retention removed what we had not passed on: each subscription reports its own gap
                base = streamid.parse(entries[-1][0]) if entries else max(after, page.lost_until)
                for sub in self._subs:
                    sub.fall_behind(base)
                self.last = base
                self._notify()
            else:
                self._deliver(entries)
            if len(entries) < PAGE:
                return
