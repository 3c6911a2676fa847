"""The hub: local fan-out of every channel this instance's consumers follow; the broker's listener.

It follows a channel through the broker for the channel's first local consumer (or watcher) and
lets go after the last; each followed channel is a :class:`~app.fanout.topic.Topic`. Catching-up
consumers read through one shared :class:`~app.fanout.pages.PageSource`. The joins and leaves
announced on a followed channel go to the local connections that watch its presence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from app import metrics
from app.broker.interface import Entry, Follower
from app.errors import BrokerError
from app.fanout.pages import PageSource
from app.fanout.subscription import Subscription
from app.fanout.topic import Topic
from app.protocol import streamid
from app.protocol.names import Position

log = logging.getLogger("relay.hub")

PresenceWatcher = Callable[[str, str], None]
"""Told of a join or leave: the connection's id, and the frame for the others."""


class Hub:
    def __init__(self, broker: Follower, *, buffer: int) -> None:
        self._broker = broker
        # what catching-up subscriptions read, shared
        self.pages = PageSource(broker.read, followed=lambda channel: channel in self._topics)
        # made once: a bound method per topic or subscription would be 64 bytes each
        self._read_entries = broker.read
        self._read_page = self.pages.read
        self._buffer = buffer
        self._topics: dict[str, Topic] = {}
        self._starting: set[asyncio.Task[None]] = set()
        self._presence: dict[str, set[PresenceWatcher]] = {}

    @property
    def topics(self) -> int:
        return len(self._topics)

    def shared_name(self, channel: str) -> str:
        """``channel`` as the topic that follows it holds it, when there is one: the subscriptions
        and presence keys of a channel then share one string, not a copy per frame that named it
        (not ``sys.intern``: CPython 3.12 made interned strings immortal, so a client naming
        ever new channels would fill memory)."""
        topic = self._topics.get(channel)
        return channel if topic is None else topic.channel

    def topic(self, channel: str) -> Topic | None:
        """The channel's topic while it is followed here."""
        return self._topics.get(channel)

    def buffered(self) -> int:
        """Live messages held for local consumers right now (for metrics: walks every subscription)."""
        return sum(topic.buffered() for topic in self._topics.values())

    async def subscribe(
        self, channel: str, position: Position, wake: Callable[[], None], *, limit: int | None = None
    ) -> Subscription:
        """Attach a consumer holding at most ``limit`` live messages (the hub's buffer by default);
        raises BrokerError when the channel cannot be followed now."""
        sub = Subscription(channel, wake)
        self._begin(await self._followed(channel), sub, position, limit)
        return sub

    def attach_soon(
        self,
        sub: Subscription,
        position: Position,
        then: Callable[[BrokerError | None], None],
        *,
        limit: int | None = None,
    ) -> None:
        """``subscribe`` without a task: begin ``sub`` (made by the caller, not yet begun) once the
        channel's position is known, at once when it is, then call ``then(None)``; or call
        ``then(error)`` when the channel cannot be followed now. A subscribe frame costs no task
        and no coroutine frames while it waits: thousands arrive together when clients come back."""
        topic = self._topics.get(sub.channel)
        if topic is None:
            topic = self._open(sub.channel)
        if topic.last is not None:
            self._begin(topic, sub, position, limit)
            then(None)
            return

        def positioned(error: BrokerError | None) -> None:
            if error is None:
                self._begin(topic, sub, position, limit)
            else:
                self._drop_if_unused(topic)
            then(error)

        topic.when_positioned(positioned)

    def _begin(self, topic: Topic, sub: Subscription, position: Position, limit: int | None) -> None:
        tail = topic.last
        assert tail is not None
        sub.begin(
            last=tail if position.latest else position.after,
            base=tail,
            report_gap=position.report_gap,
            limit=limit or self._buffer,
            reader=self._read_page,
        )
        topic.add(sub)

    def unsubscribe(self, sub: Subscription) -> None:
        topic = self._topics.get(sub.channel)
        if topic is not None:
            topic.discard(sub)
            self._drop_if_unused(topic)

    async def watch(self, channel: str, watcher: Callable[[], None]) -> None:
        """Call ``watcher`` (which must not block) whenever the channel has new entries."""
        topic = await self._followed(channel)
        topic.watch(watcher)

    def unwatch(self, channel: str, watcher: Callable[[], None]) -> None:
        topic = self._topics.get(channel)
        if topic is not None:
            topic.unwatch(watcher)
            self._drop_if_unused(topic)

    def watch_presence(self, channel: str, watcher: PresenceWatcher) -> None:
        """Call ``watcher(client, frame)`` for each join and leave on a channel followed here (a
        subscription keeps it followed); it must not block."""
        self._presence.setdefault(channel, set()).add(watcher)

    def unwatch_presence(self, channel: str, watcher: PresenceWatcher) -> None:
        watchers = self._presence.get(channel)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._presence[channel]

    def close(self) -> None:
        for topic in list(self._topics.values()):
            self._drop(topic)

    # -- BrokerListener -------------------------------------------------------------------------

    def on_announcement(self, channel: str, prev: str, entries: list[Entry]) -> None:
        topic = self._topics.get(channel)
        if topic is not None:
            topic.on_announcement(streamid.parse(prev), entries)

    def on_presence(self, channel: str, client: str, frame: str) -> None:
        for watcher in list(self._presence.get(channel, ())):
            watcher(client, frame)

    def on_resubscribed(self) -> None:
        for topic in self._topics.values():
            topic.resync()

    # -- topics ---------------------------------------------------------------------------------

    async def _followed(self, channel: str) -> Topic:
        """The channel's topic, once its position is known (following it if needed)."""
        topic = self._topics.get(channel)
        if topic is None:
            topic = self._open(channel)
        try:
            await topic.position()
        except BaseException:
            self._drop_if_unused(topic)
            raise
        return topic

    def _open(self, channel: str) -> Topic:
        topic = Topic(channel, self._read_entries)
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
            last = await self._broker.follow(topic.channel)
        except Exception as exc:  # BrokerError, or anything else: the waiting consumers must hear
            if not isinstance(exc, BrokerError):
                log.exception("following channel %r failed", topic.channel)
            topic.failed(exc if isinstance(exc, BrokerError) else BrokerError(f"cannot follow: {exc}"))
            if self._topics.get(topic.channel) is topic:
                self._drop(topic)
            return
        topic.started(last)

    def _drop_if_unused(self, topic: Topic) -> None:
        if topic.unused and self._topics.get(topic.channel) is topic:
            self._drop(topic)

    def _drop(self, topic: Topic) -> None:
        del self._topics[topic.channel]
        metrics.TOPICS.set(len(self._topics))
        topic.close()
        self._broker.unfollow(topic.channel)
        self.pages.forget(topic.channel)
