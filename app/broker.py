"""The broker: the only thing that crosses processes. Everything Redis-facing sits behind it.

One implementation exists, :class:`app.broker_redis.RedisBroker`, used both with a real Redis and
with the embedded in-process one (fakeredis). This module states what any broker guarantees;
``docs/design.md`` explains why the Redis one is built the way it is.

Storage
    Channel ``C`` is one Redis Stream. An entry's id is the message's id; ids of one channel
    grow strictly. The stream is the source of truth: history, resume and gap reports are
    answered from it, never from memory.

Publishing (:meth:`Broker.publish`)
    A batch of requests goes to Redis in one round trip. Each request appends its messages to
    its channel's stream in order, atomically with an announcement of those entries, and
    applies retention. A result is returned only once Redis has the entries; any failure is
    raised (:class:`~app.errors.BrokerUnavailable`) or returned per request
    (:class:`~app.errors.StorageError`) and means "not known to be stored": a caller never
    acknowledges on an error. Requests of one channel within a batch are stored in batch order.

Announcements (:meth:`Broker.follow`, :class:`BrokerListener`)
    Every publish announces ``(prev, entries)`` on the channel's Pub/Sub channel, where ``prev``
    is the id of the stream's last entry before them. Announcements may be lost (Pub/Sub drops
    everything while the connection is down) but never reordered. A listener that has seen
    entry ``L`` and receives ``prev > L`` has missed something and must read the stream after
    ``L``; ``prev <= L`` means nothing was missed. After a reconnect the broker calls
    :meth:`BrokerListener.on_resubscribed`: everything since the connection dropped may have
    been missed, so every followed channel must be read again from its last seen id.

    ``follow`` returns only once the subscription is active, with the id of the stream's last
    entry at that moment: every later entry is either announced or found by reading after it.

Reading (:meth:`Broker.read`)
    Returns entries after an id, in order, and says whether retention removed entries after that
    id (a gap), atomically with the read.

Consumer groups (:meth:`Broker.group_read` and the rest)
    A group is a Redis consumer group on the channel's stream; each process is one consumer in it
    (``RELAY_INSTANCE_NAME``) and shares what it reads among its local members. An entry read by
    a consumer is pending until acknowledged. A consumer keeps its pending entries by touching them
    (:meth:`Broker.group_touch`); entries nobody touched for ``min_idle_ms`` were held by someone who
    went away, and :meth:`Broker.group_claim` hands them to another consumer (counting a delivery)
    or, once delivered ``max_deliveries`` times, moves them to the dead-letter stream and
    acknowledges them. Claims are atomic: an entry is never claimed or buried twice.

The broker holds a constant number of Redis connections, whatever the number of channels,
consumers and groups: one for Pub/Sub, one for publishing, a few for everything else. No call
blocks waiting for new entries; the announcements say when to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from app.streamid import StreamId

Entry = tuple[str, str]
"""``(entry id, data)``: the id as Redis writes it, the producer's JSON text."""


@dataclass(slots=True)
class PublishRequest:
    """Messages for one channel, stored in order in one atomic step.

    With ``idempotency_key`` the request holds exactly one message, which is stored only if the key
    was not used on the channel within the idempotency window.
    """

    channel: str
    data: list[str]
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Published:
    ids: list[str]
    replayed: bool = False  # the idempotency key was known: ``ids`` holds the first id, nothing stored


@dataclass(frozen=True, slots=True)
class Page:
    """Entries after ``after`` in stream order, and what was lost before them."""

    entries: list[Entry]
    lost_until: StreamId | None = None
    """Set when retention removed entries after ``after``: the id of the newest one removed."""
    exists: bool = True


@dataclass(frozen=True, slots=True)
class Delivery:
    """An entry handed to a group member; ``count`` is 1 for a first delivery."""

    entry_id: str
    data: str
    count: int


@dataclass(frozen=True, slots=True)
class Claimed:
    deliveries: list[Delivery]
    dead: list[str]  # ids moved to the dead-letter stream


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    group: str
    name: str
    pending: int
    idle_ms: int


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    name: str
    length: int
    first_id: str | None
    last_id: str
    groups: int = 0


class BrokerListener(Protocol):
    """Receives announcements; called from the broker's reader task, must not block."""

    def on_announcement(self, channel: str, prev: str, entries: list[Entry]) -> None: ...

    def on_resubscribed(self) -> None:
        """The Pub/Sub connection came back: announcements since it dropped are lost."""


class Broker(Protocol):
    async def start(self, listener: BrokerListener) -> None:
        """Begin following announcements; returns at once, connecting in the background."""

    async def close(self) -> None:
        """Stop background work and close every connection. Safe to call twice."""

    async def ping(self) -> None:
        """Return when Redis answers and live announcements flow; else raise BrokerUnavailable."""

    async def publish(self, requests: Sequence[PublishRequest]) -> list[Published | Exception]:
        """Store every request in one round trip; one result (or per-request error) each.

        Raises BrokerUnavailable when Redis could not be reached at all.
        """

    async def follow(self, channel: str) -> StreamId:
        """Subscribe to the channel's announcements; return its last entry id once active."""

    def unfollow(self, channel: str) -> None:
        """Stop the channel's announcements. Ordered with ``follow`` calls made after it."""

    async def read(
        self, channel: str, after: StreamId, *, until: StreamId | None, count: int, report_gap: bool = True
    ) -> Page:
        """At most ``count`` entries with ``after < id <= until`` (no bound when ``until`` is None)."""

    async def channels(self, limit: int) -> list[ChannelInfo]:
        """Up to ``limit`` channels that have a stream, by name."""

    async def group_create(self, channel: str, group: str, start: StreamId | None) -> None:
        """Create the group at ``start`` (None: after the last entry) unless it exists."""

    async def group_read(self, channel: str, group: str, consumer: str, count: int) -> list[Delivery]:
        """Up to ``count`` entries no consumer of the group has had yet; never blocks."""

    async def group_ack(self, channel: str, group: str, ids: Sequence[str]) -> None:
        """The entries are done: they leave the group's pending list."""

    async def group_touch(self, channel: str, group: str, consumer: str, ids: Sequence[str]) -> None:
        """The consumer still holds these entries: reset their idle time (counts no delivery)."""

    async def group_claim(
        self, channel: str, group: str, consumer: str, *, min_idle_ms: int, max_deliveries: int, count: int
    ) -> Claimed:
        """Take over up to ``count`` entries idle for ``min_idle_ms``; bury those delivered enough."""

    async def heartbeat(self, name: str, ttl_ms: int) -> None:
        """Say that the process ``name`` lives, for ``ttl_ms``."""
