"""Local fan-out: one topic per channel with local consumers, many subscriptions per topic.

The hub follows a channel's announcements for its first local consumer and lets go after the
last. Each topic keeps the id of the last entry it passed on; an announcement whose ``prev`` is
that id is fanned out as is; anything else means a hole, filled by reading the stream, while
later announcements wait in order. Each message's frame is built once and handed to every
subscription, which never blocks the fan-out (:mod:`app.subscription`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from redis.backoff import ExponentialWithJitterBackoff

from app import metrics, protocol, streamid
from app.broker import Broker, Entry
from app.errors import BrokerError
from app.pages import PAGE, PageSource
from app.protocol import Position
from app.streamid import StreamId
from app.subscription import Subscription
from app.wire import Outgoing

log = logging.getLogger("relay.hub")
_observe_latency = metrics.FANOUT_LATENCY.observe
_count_delivered = metrics.DELIVERED.inc

_HELD_ENTRIES: Final = 10_000  # announced entries held per topic while it reads; beyond, re-read
_HELD_BYTES: Final = 8 * 1024 * 1024


class Topic:
    __slots__ = (
        "_busy",
        "_fill",
        "_held",
        "_held_bytes",
        "_held_entries",
        "_hub",
        "_resync",
        "_seq",
        "channel",
        "last",
        "ready",
        "subs",
        "waiters",
        "watchers",
    )

    def __init__(self, hub: Hub, channel: str) -> None:
        self._hub = hub
        self.channel = channel
        self.subs: set[Subscription] = set()
        self.watchers: set[Callable[[], None]] = set()  # told of new entries (consumer groups)
        self.waiters = 0
        self.last: StreamId | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held: deque[tuple[int, StreamId, list[Entry]]] = deque()  # (seq, prev, entries)
        self._held_entries = 0
        self._held_bytes = 0
        self._seq = 0
        self._busy = True  # until the first position is known
        self._resync = False
        self._fill: asyncio.Task[None] | None = None

    def started(self, last: StreamId) -> None:
        self.last = last
        self.ready.set_result(None)
        self._start_fill()  # deliver what arrived meanwhile

    def on_announcement(self, prev: StreamId, entries: list[Entry]) -> None:
        if self._busy:
            self._hold(prev, entries)
        elif self.last is not None and prev > self.last:
            self._hold(prev, entries)
            self._start_fill()
        else:
            self._deliver(entries)

    def resync(self) -> None:
        """Announcements may have been lost: read the stream after ``last`` (once it is known)."""
        self._resync = True
        if not self._busy:
            self._start_fill()

    def close(self) -> None:
        if self._fill is not None:
            self._fill.cancel()

    def _hold(self, prev: StreamId, entries: list[Entry]) -> None:
        self._held_entries += len(entries)
        self._held_bytes += sum(len(data) for _, data in entries)
        if self._held_entries > _HELD_ENTRIES or self._held_bytes > _HELD_BYTES:
            self._held.clear()  # the stream has them all: read it again instead of holding more
            self._held_entries = self._held_bytes = 0
            self._resync = True
            return
        self._seq += 1
        self._held.append((self._seq, prev, entries))

    def _deliver(self, entries: list[Entry]) -> None:
        last = self.last
        assert last is not None
        channel = self.channel
        subs = self.subs
        now_ms = time.time() * 1000
        written = 0
        for entry_id, data in entries:
            sid = streamid.parse(entry_id)
            if sid <= last:
                continue
            self.last = last = sid  # kept current: a malformed id later in the batch stops here
            message = Outgoing(protocol.message_frame(entry_id, channel, data))
            for sub in subs:
                written += sub.push(sid, message)
            _observe_latency((now_ms - sid[0]) / 1000)
        if written:
            _count_delivered(written)  # the rest is counted by each connection's writer
        self._notify()

    def _notify(self) -> None:
        for watcher in self.watchers:
            watcher()

    def _start_fill(self) -> None:
        self._busy = True
        if self._fill is None or self._fill.done():
            self._fill = asyncio.create_task(self._filling(), name=f"relay-fill-{self.channel}")

    async def _filling(self) -> None:
        backoff = ExponentialWithJitterBackoff(base=0.1, cap=5.0)
        failures = 0
        while True:
            try:
                if await self._fill_once():
                    return
                failures = 0
            except Exception as exc:  # Redis away, or an entry we cannot parse: never stop following
                failures += 1
                log.warning("reading channel %r failed (%s); retrying", self.channel, exc)
                await asyncio.sleep(backoff.compute(failures))

    async def _fill_once(self) -> bool:
        """Read the stream when something was missed, then release what is held; True when idle."""
        forced_below = 0
        if self._resync or (self._held and self._held[0][1] > self._position()):
            forced_below = self._seq + 1  # held before this read: their entries were stored before it
            self._resync = False
            try:
                await self._read_to_end()
            except BaseException:
                self._resync = True  # the read did not happen: do it again
                raise
        if not self._release(forced_below) or self._resync:
            return False
        self._busy = False
        return True

    def _release(self, forced_below: int) -> bool:
        """Deliver held announcements that continue from ``last``; False at a hole still to read.

        An announcement held before a read that reached the end of the stream, and still beyond
        ``last``, names entries the stream no longer has (deleted, or lost in a failover): it is
        delivered as it is rather than waited on forever.
        """
        while self._held:
            seq, prev, entries = self._held[0]
            if prev > self._position():
                if seq >= forced_below:
                    return False
                log.warning("channel %r: entries up to %s vanished from the stream", self.channel, prev)
                for sub in self.subs:
                    sub.push_loss()  # each consumer gets a gap frame before what follows
            self._held.popleft()
            self._held_entries -= len(entries)
            self._held_bytes -= sum(len(data) for _, data in entries)
            self._deliver(entries)
        return True

    def _position(self) -> StreamId:
        assert self.last is not None
        return self.last

    async def _read_to_end(self) -> None:
        while True:
            after = self._position()
            page = await self._hub.broker.read(self.channel, after, until=None, count=PAGE)
            entries = page.entries
            if page.lost_until is not None:
                # retention removed what we had not passed on: each subscription reports its own gap
                base = streamid.parse(entries[-1][0]) if entries else max(after, page.lost_until)
                for sub in self.subs:
                    sub.fall_behind(base)
                self.last = base
                self._notify()
            else:
                self._deliver(entries)
            if len(entries) < PAGE:
                return


class Hub:
    """Fan-out within one instance; the broker's listener."""

    def __init__(self, broker: Broker, *, buffer: int) -> None:
        self.broker = broker
        # what catching-up subscriptions read, shared
        self.pages = PageSource(broker.read, followed=lambda channel: channel in self._topics)
        self._buffer = buffer
        self._topics: dict[str, Topic] = {}
        self._starting: set[asyncio.Task[None]] = set()

    @property
    def topics(self) -> int:
        return len(self._topics)

    def buffered(self) -> int:
        """Live messages held for local consumers right now (for metrics: walks every subscription)."""
        return sum(sub.buffered for topic in self._topics.values() for sub in topic.subs)

    async def subscribe(self, channel: str, position: Position, wake: Callable[[], None]) -> Subscription:
        """Attach a consumer; raises BrokerError when the channel cannot be followed now."""
        topic = await self._followed(channel)
        assert topic.last is not None
        tail = topic.last
        last = tail if position.latest else position.after
        sub = Subscription(
            channel,
            last=last,
            base=tail,
            report_gap=position.report_gap,
            limit=self._buffer,
            reader=self.pages.read,
            wake=wake,
        )
        topic.subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        topic = self._topics.get(sub.channel)
        if topic is not None:
            topic.subs.discard(sub)
            self._drop_if_unused(topic)

    async def watch(self, channel: str, watcher: Callable[[], None]) -> None:
        """Call ``watcher`` (which must not block) whenever the channel has new entries."""
        topic = await self._followed(channel)
        topic.watchers.add(watcher)

    def unwatch(self, channel: str, watcher: Callable[[], None]) -> None:
        topic = self._topics.get(channel)
        if topic is not None:
            topic.watchers.discard(watcher)
            self._drop_if_unused(topic)

    async def _followed(self, channel: str) -> Topic:
        """The channel's topic, once its position is known (following it if needed)."""
        topic = self._topics.get(channel)
        if topic is None:
            topic = self._open(channel)
        if topic.last is None:
            topic.waiters += 1
            try:
                await asyncio.shield(topic.ready)
            except BaseException:
                topic.waiters -= 1
                self._drop_if_unused(topic)
                raise
            topic.waiters -= 1
        return topic

    def close(self) -> None:
        for topic in list(self._topics.values()):
            self._drop(topic)

    # -- BrokerListener -------------------------------------------------------------------------

    def on_announcement(self, channel: str, prev: str, entries: list[Entry]) -> None:
        topic = self._topics.get(channel)
        if topic is not None:
            topic.on_announcement(streamid.parse(prev), entries)

    def on_resubscribed(self) -> None:
        for topic in self._topics.values():
            topic.resync()

    # -- topics ---------------------------------------------------------------------------------

    def _open(self, channel: str) -> Topic:
        topic = Topic(self, channel)
        self._topics[channel] = topic
        metrics.TOPICS.set(len(self._topics))
        task = asyncio.create_task(self._start(topic), name=f"relay-follow-{channel}")
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)
        return topic

    async def _start(self, topic: Topic) -> None:
        if self._topics.get(topic.channel) is not topic:
            return  # dropped before it began: following now would leave it subscribed for nobody
        try:
            last = await self.broker.follow(topic.channel)
        except Exception as exc:  # BrokerError, or anything else: the waiting consumers must hear
            if not isinstance(exc, BrokerError):
                log.exception("following channel %r failed", topic.channel)
            self._fail(topic, exc if isinstance(exc, BrokerError) else BrokerError(f"cannot follow: {exc}"))
            return
        if not topic.ready.done():
            topic.started(last)

    def _drop_if_unused(self, topic: Topic) -> None:
        if (
            not topic.subs
            and not topic.watchers
            and topic.waiters == 0
            and self._topics.get(topic.channel) is topic
        ):
            self._drop(topic)

    def _fail(self, topic: Topic, error: BrokerError) -> None:
        if not topic.ready.done():
            topic.ready.set_exception(error)
            topic.ready.exception()  # marked as retrieved: there may be no waiter left
        if self._topics.get(topic.channel) is topic:
            self._drop(topic)

    def _drop(self, topic: Topic) -> None:
        del self._topics[topic.channel]
        metrics.TOPICS.set(len(self._topics))
        topic.close()
        if not topic.ready.done():
            self._fail(topic, BrokerError(f"channel {topic.channel!r} is no longer followed"))
        self.broker.unfollow(topic.channel)
        self.pages.forget(topic.channel)
