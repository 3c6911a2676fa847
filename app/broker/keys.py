"""Every Redis key and Pub/Sub channel name the relay uses, in one place.

For a channel ``C`` and the default prefix ``relay``:

=============================  ===========  =====================================================
name                           type         holds
=============================  ===========  =====================================================
``relay:{C}``                  stream       the messages; field ``data`` is the producer's JSON
``relay:{C}:trimmed``          string       id of the newest entry retention removed (for gaps)
``relay:{C}:idem:<key>``       string       the id an ``Idempotency-Key`` was first stored under
``relay:{C}:live``             Pub/Sub      announcements of new entries (not a key; a shard channel
                                            on a cluster, ``SPUBLISH``/``SSUBSCRIBE``)
``relay:{C}:dead``             stream       dead letters of the channel's consumer groups
``relay:{C}:presence``         hash         who is on the channel: connection id -> ``<epoch> <entry>``
``relay:instance:<name>``      Pub/Sub      one per instance; keeps its Pub/Sub connection open (on
                                            a cluster, one per shard connection: never published to)
``relay:alive:<name>``         string       an instance's or worker's heartbeat (expires)
``relay:janitor:lease``        string       which janitor works now (expires)
``relay:present:<boot>``       string       an instance process's presence heartbeat (expires
                                            after ``RELAY_PRESENCE_TTL``): ``<epoch> <name>``
=============================  ===========  =====================================================

Consumer groups live on the channel's stream itself (``XINFO GROUPS relay:{C}``); each process
is one consumer in them, named after ``RELAY_INSTANCE_NAME``.

The braces are a Redis Cluster hash tag: everything of one channel lives in one slot, so no script
crosses slots and a channel's announcements stay on its shard. The other keys (heartbeats, the
lease) hash wherever they do and are never used in a script beside a channel's.
"""

from __future__ import annotations


class Keys:
    """Key names under one prefix (``RELAY_KEY_PREFIX``)."""

    __slots__ = ("_prefix",)

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    @property
    def prefix(self) -> str:
        return self._prefix

    def stream(self, channel: str) -> str:
        return f"{self._prefix}:{{{channel}}}"

    def trimmed(self, channel: str) -> str:
        return f"{self._prefix}:{{{channel}}}:trimmed"

    def idempotency(self, channel: str, key: str) -> str:
        return f"{self._prefix}:{{{channel}}}:idem:{key}"

    def live(self, channel: str) -> str:
        return f"{self._prefix}:{{{channel}}}:live"

    def dead(self, channel: str) -> str:
        return f"{self._prefix}:{{{channel}}}:dead"

    def presence(self, channel: str) -> str:
        return f"{self._prefix}:{{{channel}}}:presence"

    def present(self, boot: str) -> str:
        return f"{self._prefix}:present:{boot}"

    def instance(self, name: str) -> str:
        return f"{self._prefix}:instance:{name}"

    def alive(self, name: str) -> str:
        return f"{self._prefix}:alive:{name}"

    def janitor_lease(self) -> str:
        return f"{self._prefix}:janitor:lease"

    def stream_pattern(self) -> str:
        """A ``SCAN MATCH`` pattern for every channel's stream (channel names hold no braces)."""
        return f"{self._prefix}:{{*}}"

    def channel_of_stream(self, key: str) -> str:
        """The channel whose stream is ``key`` (inverse of :meth:`stream`)."""
        return key[len(self._prefix) + 2 : -1]

    def channel_of_live(self, name: str) -> str:
        """The channel whose announcements go to the Pub/Sub channel ``name``."""
        return name[len(self._prefix) + 2 : -6]
