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
from collections import deque
from collections.abc import Callable
from typing import Final

from redis.backoff import ExponentialWithJitterBackoff

from app import metrics, protocol, streamid
from app.broker import Entry
from app.broker_redis import RedisBroker
from app.errors import BrokerError
from app.protocol import Position
from app.streamid import StreamId
from app.subscription import PAGE, Subscription, text_message

log = logging.getLogger("relay.hub")

_PENDING_LIMIT: Final = 10_000  # held announcements per topic while it reads; beyond, re-read


class Topic:
    __slots__ = (
        "_busy",
        "_fill",
        "_hub",
        "_pending",
        "_resync",
        "channel",
        "last",
        "ready",
        "subs",
        "waiters",
    )

    def __init__(self, hub: Hub, channel: str) -> None:
        self._hub = hub
        self.channel = channel
        self.subs: set[Subscription] = set()
        self.waiters = 0
        self.last: StreamId | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending: deque[tuple[StreamId, list[Entry]]] = deque()
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
        """Announcements may have been lost: read the stream after ``last``."""
        if self.last is None:
            return
        self._resync = True
        if not self._busy:
            self._start_fill()

    def close(self) -> None:
        if self._fill is not None:
            self._fill.cancel()

    def _hold(self, prev: StreamId, entries: list[Entry]) -> None:
        if len(self._pending) >= _PENDING_LIMIT:
            self._pending.clear()  # the stream has them all; read again instead
            self._resync = True
        self._pending.append((prev, entries))

    def _deliver(self, entries: list[Entry]) -> None:
        last = self.last
        assert last is not None
        channel = self.channel
        subs = self.subs
        for entry_id, data in entries:
            sid = streamid.parse(entry_id)
            if sid <= last:
                continue
            last = sid
            message = text_message(protocol.message_frame(entry_id, channel, data))
            for sub in subs:
                sub.push(sid, message)
        self.last = last

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
            except BrokerError as exc:
                failures += 1
                metrics.REDIS_ERRORS.labels("read").inc()
                log.warning("reading channel %r failed (%s); retrying", self.channel, exc)
                await asyncio.sleep(backoff.compute(failures))

    async def _fill_once(self) -> bool:
        """Read until the held announcements continue the stream; True when no longer busy."""
        if self._resync or (self._pending and self._pending[0][0] > self._position()):
            self._resync = False
            await self._read_to_end()
        while self._pending:
            prev, entries = self._pending[0]
            if prev > self._position():
                return False  # another hole: read again
            self._pending.popleft()
            self._deliver(entries)
        if self._resync:
            return False
        self._busy = False
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
            else:
                self._deliver(entries)
            if len(entries) < PAGE:
                return


class Hub:
    """Fan-out within one instance; the broker's listener."""

    def __init__(self, broker: RedisBroker, *, buffer: int) -> None:
        self.broker = broker
        self._buffer = buffer
        self._topics: dict[str, Topic] = {}
        self._starting: set[asyncio.Task[None]] = set()

    @property
    def topics(self) -> int:
        return len(self._topics)

    async def subscribe(self, channel: str, position: Position, wake: Callable[[], None]) -> Subscription:
        """Attach a consumer; raises BrokerError when the channel cannot be followed now."""
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
        assert topic.last is not None
        tail = topic.last
        last = tail if position.latest else position.after
        sub = Subscription(
            channel,
            last=last,
            base=tail,
            report_gap=position.report_gap,
            limit=self._buffer,
            reader=self.broker.read,
            wake=wake,
        )
        topic.subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        topic = self._topics.get(sub.channel)
        if topic is not None:
            topic.subs.discard(sub)
            self._drop_if_unused(topic)

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
        try:
            last = await self.broker.follow(topic.channel)
        except BrokerError as exc:
            if self._topics.get(topic.channel) is topic:
                self._drop(topic)
            if not topic.ready.done():
                topic.ready.set_exception(exc)
            return
        if not topic.ready.done():
            topic.started(last)

    def _drop_if_unused(self, topic: Topic) -> None:
        if not topic.subs and topic.waiters == 0 and self._topics.get(topic.channel) is topic:
            self._drop(topic)

    def _drop(self, topic: Topic) -> None:
        del self._topics[topic.channel]
        metrics.TOPICS.set(len(self._topics))
        topic.close()
        if not topic.ready.done():
            topic.ready.set_exception(BrokerError(f"channel {topic.channel!r} is no longer followed"))
            topic.ready.exception()  # retrieved: nobody else may be waiting
        self.broker.unfollow(topic.channel)
