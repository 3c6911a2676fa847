"""Announcements on a Redis Cluster: one sharded Pub/Sub connection per shard, channels routed by slot.

A channel's announcements are published with ``SPUBLISH`` by the script that stores its entries,
on the shard that owns the channel's slot, and reach only the connections that ``SSUBSCRIBE``\\d
there. So the instance keeps one :class:`~app.broker.pubsub.PubSubSupervisor` per shard master
(a connection of its own, named ``relay:<instance>:sub``) and subscribes each followed channel on
the supervisor of the master that owns its slot, as the cluster client's slot map says.

redis-py 8's asyncio ``ClusterPubSub`` does subscribe shard channels on the right node and moves
them after a slot moves, but its reading is a poll: ``get_sharded_message`` asks each node's
connection in turn with a timeout, so a quiet shard delays the others (or, with no timeout, the
loop spins); and it does not tell its user when a node's connection dropped and announcements were
lost, which the relay must know to read the streams again. Hence this module: one blocking reader
per shard, and a router.

The router refreshes the slot map (``CLUSTER SLOTS`` through the cluster client) whenever a shard's
supervisor is in trouble (its connection dropped, Redis answered ``MOVED`` to an ``SSUBSCRIBE``, or
unsubscribed a channel whose slot moved away) and every 30 s anyway, with a client of its own; it starts a supervisor
for each new master, stops those of nodes that are no longer masters, and moves every channel whose
slot changed hands to its new owner, which reads the channel again once subscribed (the listener's
``on_resubscribed``). The instance is ready while every master's supervisor is connected; a
channel can be followed while its own shard's is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final, cast

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode

from app.backoff import Backoff
from app.broker.calls import describe
from app.broker.clients import Clients
from app.broker.interface import BrokerListener
from app.broker.keys import Keys
from app.broker.pubsub import PubSubSupervisor
from app.errors import BrokerUnavailable
from app.settings import Settings

log = logging.getLogger("relay.broker")

_CHECK_INTERVAL: Final = 30.0  # seconds between two looks at the slot map when nothing is wrong
_TROUBLE_CAP: Final = 0.5


class ShardedPubSub:
    """An :class:`~app.broker.pubsub.Announcements` over every shard of a cluster."""

    def __init__(self, made: Clients, keys: Keys, settings: Settings) -> None:
        self._made = made
        # a client of its own for the slot map: redis-py remakes every connection of a cluster
        # client whose map it reads again, and the router reads it every few seconds
        self._cluster = cast(RedisCluster, made.make("slots", 1, 0, False))
        self._keys = keys
        self._settings = settings
        self._shards: dict[str, PubSubSupervisor] = {}  # master's node name -> its supervisor
        self._owner: dict[str, str] = {}  # followed channel -> node name it is subscribed on
        self._listener: BrokerListener | None = None
        self._trouble = asyncio.Event()
        self._mapped = False  # the slot map was read and every master has a supervisor
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._moves: set[asyncio.Task[None]] = set()
        self._refreshing = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._mapped and all(shard.connected for shard in self._shards.values())

    def start(self, listener: BrokerListener) -> None:
        self._listener = listener
        self._task = asyncio.create_task(self._route_forever(), name="relay-shards")

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._moves):
            task.cancel()
        await asyncio.gather(*self._moves, return_exceptions=True)
        async with self._refreshing:  # a follow() refreshing now opens nothing more
            await asyncio.gather(*(self._close(name) for name in list(self._shards)))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._cluster.aclose(), self._settings.redis_timeout)

    async def follow(self, channel: str) -> None:
        for _ in range(2):  # once more when the slot moved meanwhile
            shard = self._shard_of(channel)
            self._owner[channel] = shard
            try:
                await self._shards[shard].follow(channel)
                return
            except BrokerUnavailable:
                if self._owner.get(channel) != shard:  # let go meanwhile, or moved by the router
                    raise
                if not await self._refresh() or self._shard_of(channel) == shard:
                    raise
                if shard in self._shards:
                    self._shards[shard].unfollow(channel)
        raise BrokerUnavailable(f"the slot of {channel!r} kept moving while it was followed")

    def unfollow(self, channel: str) -> None:
        shard = self._owner.pop(channel, None)
        if shard in self._shards:
            self._shards[shard].unfollow(channel)

    def _shard_of(self, channel: str) -> str:
        """The master that owns the channel's slot, by the slot map; BrokerUnavailable when unknown
        or when that master's connection is down (channels of the other shards go on)."""
        if not self._mapped:
            raise BrokerUnavailable("the cluster's slot map is not known yet")
        try:
            node = self._cluster.get_node_from_key(self._keys.live(channel))
        except Exception as exc:  # SlotNotCoveredError: a shard is failing over
            raise BrokerUnavailable(f"no shard owns {channel!r} now: {describe(exc)}") from exc
        shard = self._shards.get(str(getattr(node, "name", "")))
        if shard is None or not shard.connected:
            raise BrokerUnavailable(f"the sharded Pub/Sub connection for {channel!r} is down")
        return str(getattr(node, "name", ""))

    # -- routing --------------------------------------------------------------------------------

    async def _route_forever(self) -> None:
        backoff = Backoff(cap=_TROUBLE_CAP)
        while True:
            self._trouble.clear()  # before reading the map: trouble reported meanwhile counts
            if await self._refresh():
                backoff.reset()
            else:
                await asyncio.sleep(backoff.failed())
                continue
            wait = _TROUBLE_CAP if not self.connected else _CHECK_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._trouble.wait(), wait)

    async def _refresh(self) -> bool:
        """Read the slot map again and route by it; False when no node answered."""
        async with self._refreshing:  # the router, and a follow() that found its slot moved
            return False if self._stopped else await self._route()

    async def _route(self) -> bool:
        try:
            async with asyncio.timeout(self._settings.redis_timeout * 2):
                await self._cluster.initialize()  # the first time (so that aclose() closes it all)
                await self._cluster.nodes_manager.initialize()
        except Exception as exc:  # every node away, or one answering nonsense mid-failover
            log.warning("cannot read the cluster's slot map: %s", describe(exc))
            return False
        masters = {str(node.name): node for node in self._cluster.get_primaries()}
        for name, node in masters.items():
            if name not in self._shards:
                self._open(node)
        self._mapped = True
        gone = [name for name in self._shards if name not in masters]
        self._move_strays(gone)
        for name in gone:  # after the moves: a dead node's close may take a while
            await self._close(name)
        return True

    def _open(self, node: ClusterNode) -> None:
        client = self._made.node(node, "sub", False)
        shard = PubSubSupervisor(
            client, self._keys, self._settings, sharded=True, on_trouble=self._trouble.set
        )
        self._shards[str(node.name)] = shard
        if self._listener is not None:
            shard.start(self._listener)
        log.info("following the cluster shard at %s", node.name)

    async def _close(self, name: str) -> None:
        await self._shards.pop(name).stop()

    def _move_strays(self, gone: list[str]) -> None:
        """Every followed channel whose slot is now another master's goes there, and so does every
        channel a shard refused or let go (its slot moved, whatever the map said); once they are
        subscribed there, the hub reads the streams for what was announced meanwhile."""
        refused = {channel for shard in self._shards.values() for channel in shard.take_refused()}
        moves: list[tuple[str, str]] = []
        for channel, shard in list(self._owner.items()):
            try:
                node = self._cluster.get_node_from_key(self._keys.live(channel))
            except Exception:  # not covered now: the next refresh tries again
                continue
            name = str(getattr(node, "name", ""))
            if name not in self._shards or name in gone:
                continue
            if name == shard and channel not in refused:
                continue
            self._owner[channel] = name
            if shard != name and shard in self._shards:
                self._shards[shard].unfollow(channel)
            moves.append((name, channel))
        if moves:
            log.info("routing %d followed channel(s) to their shard again", len(moves))
            task = asyncio.create_task(self._adopt(moves))
            self._moves.add(task)
            task.add_done_callback(self._moves.discard)

    async def _adopt(self, moves: list[tuple[str, str]]) -> None:
        async def adopt(name: str, channel: str) -> None:
            if self._owner.get(channel) == name and name in self._shards:  # still wanted there
                await self._shards[name].adopt(channel)

        await asyncio.gather(*(adopt(name, channel) for name, channel in moves))
        if self._listener is not None:
            self._listener.on_resubscribed()
