"""What a broker guarantees, split by who relies on it.

One implementation exists, :class:`app.broker.streams.RedisBroker`, used both with a real Redis and
with the embedded in-process one (fakeredis); :class:`app.broker.housekeeping.RedisHousekeeping`
does the janitor's part. ``docs/design.md`` explains why they are built the way they are.

=====================  ===========================  ============================================
interface              used by                      for
=====================  ===========================  ============================================
:class:`Follower`      the hub (``app.fanout``)     announcements of new entries; reading a
                                                    channel's stream after an id
:class:`Publishing`    the publisher                storing messages, batched
:class:`GroupStore`    ``app.groups``               consumer groups: read, ack, touch, claim
:class:`PresenceStore` ``app.presence``             who is on a channel: entries, their
                                                    announcements, the instance's heartbeat
:class:`Broker`        the instance's lifecycle     all of the above, plus start, stop, ping
                       and its HTTP endpoints       and listing channels
:class:`Housekeeping`  the janitor (``workers``)    retention of quiet channels, the janitor's
                                                    lease, consumers of dead processes
=====================  ===========================  ============================================

Storage
    Channel ``C`` is one Redis Stream. An entry's id is the message's id; ids of one channel
    grow strictly. The stream is the source of truth: history, resume and gap reports are
    answered from it, never from memory.

Publishing (:meth:`Publishing.publish`)
    A batch of requests goes to Redis in one round trip. Each request appends its messages to
    its channel's stream in order, atomically with an announcement of those entries, and
    applies retention. A result is returned only once Redis has the entries; any failure is
    raised (:class:`~app.errors.BrokerUnavailable`) or returned per request
    (:class:`~app.errors.StorageError`) and means "not known to be stored": a caller never
    acknowledges on an error. Requests of one channel within a batch are stored in batch order.

Announcements (:meth:`Follower.follow`, :class:`BrokerListener`)
    Every publish announces ``(prev, entries)`` on the channel's Pub/Sub channel, where ``prev``
    is the id of the stream's last entry before them. Announcements may be lost (Pub/Sub drops
    everything while the connection is down) but never reordered. A listener that has seen
    entry ``L`` and receives ``prev > L`` has missed something and must read the stream after
    ``L``; ``prev <= L`` means nothing was missed. After a reconnect the broker calls
    :meth:`BrokerListener.on_resubscribed`: everything since the connection dropped may have
    been missed, so every followed channel must be read again from its last seen id.

    ``follow`` returns only once the subscription is active, with the id of the stream's last
    entry at that moment: every later entry is either announced or found by reading after it.
    ``follow`` and ``unfollow`` of one channel take effect in call order.

Reading (:meth:`Follower.read`)
    Returns entries after an id, in order, and says whether retention removed entries after that
    id (a gap), atomically with the read.

Consumer groups (:class:`GroupStore`)
    A group is a Redis consumer group on the channel's stream; each process is one consumer in it
    (``RELAY_INSTANCE_NAME``) and shares what it reads among its local members. An entry read by
    a consumer is pending until acknowledged. A consumer keeps its pending entries by touching them
    (:meth:`GroupStore.group_touch`); entries nobody touched for ``min_idle_ms`` were held by someone
    who went away, and :meth:`GroupStore.group_claim` hands them to another consumer (counting a
    delivery) or, once delivered ``max_deliveries`` times, moves them to the dead-letter stream and
    acknowledges them. Claims are atomic: an entry is never claimed or buried twice. A group that
    vanished (deleted, or Redis restarted empty) raises :class:`~app.errors.GroupMissing`.

Presence (:class:`PresenceStore`)
    A channel's presence is a set of entries, one per connection present, keyed by the
    connection's id ``<boot>.<n>``, where ``<boot>`` names the instance process that holds it.
    Each join or leave changes the set and then announces itself on the channel's announcement
    channel (:meth:`BrokerListener.on_presence`), in the order the calls were made (a join only
    when its entry is new). An entry is written in an epoch of its process, and counts only while
    the process's heartbeat (:meth:`PresenceStore.presence_beat`) lives and names that epoch:
    entries of a process that died without a word drop out of every list when its heartbeat
    expires, without a write per entry, and are removed by the next list that finds them (unless
    they changed since it read them).

Connections
    A broker holds a constant number of Redis connections (per shard, on a cluster), whatever the
    number of channels, consumers and groups: one for Pub/Sub, one for publishing, a few for
    everything else. No call blocks waiting for new entries; the announcements say when to read.

Topologies
    The same guarantees hold on one Redis, behind Sentinel and on a Cluster, and through a
    failover of the master (or of a shard's master): while it lasts, calls raise
    :class:`~app.errors.BrokerUnavailable`, and afterwards the broker finds the new master by
    itself and calls :meth:`BrokerListener.on_resubscribed`. With ``RELAY_ACK_REPLICAS`` = N, a
    publish returns a result only once N replicas have its entries.

Failures
    Every method raises :class:`~app.errors.BrokerUnavailable` when Redis cannot be reached or does
    not answer within ``RELAY_REDIS_TIMEOUT``, and :class:`~app.errors.StorageError` when it refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from app.protocol.streamid import StreamId

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


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """One connection joins (``join``) or leaves a channel; ``entry`` is its presence entry as
    JSON text, ``frame`` what the channel's other connections are sent."""

    channel: str
    client: str
    entry: str
    frame: str
    join: bool
    epoch: int = 0  # of a join: the heartbeat's epoch it was written in


class BrokerListener(Protocol):
    """Receives announcements; called from the broker's reader task, must not block."""

    def on_announcement(self, channel: str, prev: str, entries: list[Entry]) -> None: ...

    def on_presence(self, channel: str, client: str, frame: str) -> None:
        """A connection ``client`` joined or left the channel; ``frame`` tells the others."""

    def on_resubscribed(self) -> None:
        """The Pub/Sub connection came back: announcements since it dropped are lost."""


class Follower(Protocol):
    """What the hub needs: announcements of a channel, and its stream to fill what they miss."""

    async def follow(self, channel: str) -> StreamId:
        """Subscribe to the channel's announcements; return its last entry id once active."""

    def unfollow(self, channel: str) -> None:
        """Stop the channel's announcements. Ordered with ``follow`` calls made after it."""

    async def read(
        self, channel: str, after: StreamId, *, until: StreamId | None, count: int, report_gap: bool = True
    ) -> Page:
        """At most ``count`` entries with ``after < id <= until`` (no bound when ``until`` is None).

        With ``report_gap``, ``lost_until`` says whether retention removed entries after ``after``."""


class Publishing(Protocol):
    """What the publisher needs."""

    async def publish(self, requests: Sequence[PublishRequest]) -> list[Published | Exception]:
        """Store every request in one round trip; one result (or per-request error) each.

        Raises BrokerUnavailable when Redis could not be reached at all.
        """


class GroupStore(Protocol):
    """What consumer groups need (``app.groups``, and the worker runner through it)."""

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
        """Say that the process ``name`` lives, for ``ttl_ms`` (the janitor spares its consumers)."""


class PresenceStore(Protocol):
    """What presence needs (``app.presence``)."""

    async def presence_change(self, changes: Sequence[PresenceChange]) -> list[str | None]:
        """Apply the changes in order, each announced once made, in one round trip; per change,
        None, or why Redis refused it for good. Applying one twice does no harm. Raises
        BrokerUnavailable when it may be tried again (Redis away, read-only, loading)."""

    async def presence_list(self, channel: str) -> dict[str, str]:
        """The entries of the channel that count (their process beats, in their epoch): client id
        -> entry (JSON)."""

    async def presence_beat(self, boot: str, value: str, ttl_ms: int) -> str | None:
        """Set the heartbeat of the process ``boot`` to ``value`` (``"<epoch> <name>"``) for
        ``ttl_ms``; what it held before (None: nothing, it had expired or was lost)."""

    async def presence_end(self, boot: str) -> None:
        """The process stops: none of its entries counts any more."""


class Broker(Follower, Publishing, GroupStore, PresenceStore, Protocol):
    """Everything one instance (or worker) asks of Redis, and the broker's own life."""

    async def start(self, listener: BrokerListener) -> None:
        """Begin following announcements; returns at once, connecting in the background."""

    async def close(self) -> None:
        """Stop background work and close every connection. Safe to call twice."""

    async def ping(self) -> None:
        """Return when Redis answers and live announcements flow; else raise BrokerUnavailable."""

    async def channels(self, limit: int) -> list[ChannelInfo]:
        """Up to ``limit`` channels that have a stream, by name."""


class Housekeeping(Protocol):
    """What the janitor needs: work on channels nobody publishes to, one janitor at a time."""

    async def channels(self, limit: int) -> list[ChannelInfo]:
        """Up to ``limit`` channels that have a stream, by name."""

    async def trim(self, channel: str) -> int:
        """Apply retention to a channel that may get no new messages; how many entries went."""

    async def lease(self, holder: str, ttl_ms: int) -> bool:
        """Take or keep the janitor's lease for ``ttl_ms``; True while ``holder`` has it."""

    async def group_consumers(self, channel: str) -> list[ConsumerInfo]:
        """Every consumer of every group of the channel, with what it holds and how long idle."""

    async def reap_consumer(self, channel: str, group: str, consumer: str, min_idle_ms: int) -> bool:
        """Remove the consumer if its process has no heartbeat, it holds nothing and has been idle
        for ``min_idle_ms`` (checked and done atomically); True when removed."""

    async def close(self) -> None:
        """Close every connection. Safe to call twice."""
