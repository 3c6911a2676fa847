"""One consumer's position in one channel: what it has been sent, what it still has to get.

A subscription receives live messages from its channel's topic (:mod:`app.fanout.topic`) into a bounded
buffer, and reads from the stream whatever the buffer does not cover:

- ``last``: id of the last message handed to the connection;
- the buffer holds every live message with ``base < id``, in order, without holes;
- ``behind``: the messages in ``(last, base]`` must first be read from Redis.

A resume (``from=<id>``) starts behind; a consumer whose buffer overflows drops the buffer and
falls behind. Either way it catches up from the stream, page by page, and then continues from the
buffer, so no message is lost or repeated at the seam (``docs/design.md``). Memory per
subscription is bounded by the buffer and one page; a slow consumer never slows the others.

While the connection's writer has nothing to send it may *park* the subscription on the
connection's :class:`~app.fanout.sink.Sink`: live messages are then written there at once, in the
fan-out, with no buffer and no wake-up. Anything else (a sink that stops taking data, a loss,
falling behind) unparks it, and the writer takes over again from the buffer, in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from app import metrics
from app.fanout.pages import PAGE, FramedPage
from app.fanout.sink import Frame, Sink
from app.protocol import frames, streamid
from app.protocol.streamid import StreamId

_LIVE_BATCH: Final = 64


class Reader(Protocol):
    """A page of the stream (:meth:`app.fanout.pages.PageSource.read`)."""

    def __call__(
        self, channel: str, after: StreamId, *, until: StreamId, report_gap: bool = True
    ) -> Awaitable[FramedPage]: ...


class Subscription:
    __slots__ = (
        "_base",
        "_behind",
        "_gap_from",
        "_limit",
        "_live",
        "_losses",
        "_reader",
        "_report_gap",
        "_wake",
        "channel",
        "last",
        "parked",
    )

    def __init__(self, channel: str, wake: Callable[[], None]) -> None:
        """A subscription that has not begun: :meth:`begin` says where it starts (the hub calls
        it once the channel's position is known). A connection's own state for a channel may
        subclass it, so that a subscription is one object, not two (``app.server.routes.multiplex``)."""
        self.channel = channel
        self._wake = wake
        self.last = streamid.ZERO
        self._base = streamid.ZERO
        self._behind = False
        self._report_gap = True
        self._gap_from: StreamId | None = None  # a loss to report before the next message
        # made when first needed (a parked subscription never needs it); None entries: loss markers
        self._live: deque[tuple[StreamId, Frame | None]] | None = None
        self._losses = 0  # loss markers in _live
        self._limit = 0
        self._reader: Reader | None = None
        self.parked: Sink | None = None  # live messages go straight to this sink

    def begin(self, *, last: StreamId, base: StreamId, report_gap: bool, limit: int, reader: Reader) -> None:
        """Deliver what follows ``last``: the stream up to ``base`` first (when behind), holding at
        most ``limit`` live messages meanwhile."""
        self.last = last
        self._base = base
        self._behind = last < base
        self._report_gap = report_gap or not self._behind  # only the first read may skip it
        self._limit = limit
        self._reader = reader

    @property
    def behind(self) -> bool:
        return self._behind

    @property
    def buffered(self) -> int:
        return len(self._live) if self._live is not None else 0

    def park(self, sink: Sink) -> None:
        """The writer is idle: write live messages to ``sink`` from now on (see the module doc)."""
        if not self._behind and not self._live and self._gap_from is None:
            self.parked = sink

    def push(self, sid: StreamId, message: Frame) -> bool:
        """A live message from the topic; True when it was written to the sink already.

        Never blocks; on overflow, fall behind instead.
        """
        if sid <= self.last:
            return False  # the client has it already: it resumed from an id this topic had not reached
        sink = self.parked
        if sink is not None:
            if sink.write(message):
                self.last = sid
                return True
            self.parked = None  # later messages must not overtake this one
        live = self._live
        if live is None:
            live = self._live = deque()
        if len(live) >= self._limit:
            self._clear()
            self._base = sid
            if not self._behind:
                self._behind = True
                metrics.SLOW_CONSUMER_EVENTS.inc()
        else:
            live.append((sid, message))
        self._wake()
        return False

    def push_loss(self) -> None:
        """Entries before the next live message vanished from the stream (not by retention, so
        no read would tell): report a gap right before that message."""
        self.parked = None
        if self._live is None:
            self._live = deque()
        self._live.append((self.last, None))
        self._losses += 1

    def fall_behind(self, base: StreamId) -> None:
        """The topic could not pass on what precedes ``base``: read it from the stream."""
        self.parked = None
        self._clear()
        self._base = base
        self._behind = True
        self._wake()

    async def take(self) -> list[Frame]:
        """The next messages to send, in order; empty when there is nothing right now."""
        self.parked = None
        if self._behind:
            return await self._catch_up()
        live = self._live
        if not live:
            return []
        out: list[Frame] = []
        last = self.last
        first: StreamId | None = None
        while live and len(out) < _LIVE_BATCH:
            sid, message = live.popleft()
            if message is None:
                self._losses -= 1
                if out:  # the gap frame goes right before the next message: in the next batch
                    live.appendleft((sid, message))
                    self._losses += 1
                    break
                self._gap_from = self._gap_from or last
            elif sid > last:
                last = sid
                first = first or sid
                out.append(message)
        self.last = last
        if first is not None and self._gap_from is not None:
            out.insert(0, self._gap_message(streamid.format_id(first)))
        return out

    async def _catch_up(self) -> list[Frame]:
        target = self._base
        after = self.last
        reader = self._reader
        assert reader is not None, "take() before begin()"
        page = await reader(self.channel, after, until=target, report_gap=self._report_gap)
        self._report_gap = True
        if page.lost_until is not None and self._gap_from is None:
            self._gap_from = after
        out: list[Frame] = []
        if page.ids and self._gap_from is not None:
            out.append(self._gap_message(page.entry_ids[0]))
        out.extend(page.frames)
        if page.ids:
            self.last = page.ids[-1]
        if len(page.ids) < PAGE:  # nothing more up to target
            self.last = max(self.last, target)
            self._behind = self._base != target  # it overflowed again while we read
        return out

    def _clear(self) -> None:
        if self._losses:  # a loss marker is about to go: keep what it had to say
            self._gap_from = self._gap_from or self.last
            self._losses = 0
        self._live = None  # and its memory with it

    def _gap_message(self, next_id: str) -> Frame:
        """Retention removed messages after ``_gap_from``: say so, naming the next one delivered."""
        assert self._gap_from is not None
        text = frames.gap(self.channel, streamid.format_id(self._gap_from), next_id)
        self._gap_from = None
        metrics.GAPS.inc()
        return Frame(text)
