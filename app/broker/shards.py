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
unsubscribed a channel whose slot moved away) and every few seconds anyway; it starts a supervisor
for each new master, stops those of nodes that are no longer masters, and moves every channel whose
slot changed hands to its new owner, which reads the channel again once subscribed (the listener's
``on_resubscribed``). The instance is ready while every master's supervisor is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

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

_CHECK_INTERVAL: Final = 5.0  # seconds between two looks at the slot map when nothing is wrong
_TROUBLE_CAP: Final = 0.5


class ShardedPubSub:
    """An :class:`~app.broker.pubsub.Announcements` over every shard of a cluster."""

    def __init__(self, made: Clients, cluster: RedisCluster, keys: Keys, settings: Settings) -> None:
        self._made = made
        self._cluster = cluster
        self._keys = keys
        self._settings = settings
        self._shards: dict[str, PubSubSupervisor] = {}  # master's node name -> its supervisor
        self._owner: dict[str, str] = {}  # followed channel -> node name it is subscribed on
        self._listener: BrokerListener | None = None
        self._trouble = asyncio.Event()
        self._mapped = False  # the slot map was read and every master has a supervisor
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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._moves):
            task.cancel()
        await asyncio.gather(*self._moves, return_exceptions=True)
        await asyncio.gather(*(self._close(name) for name in list(self._shards)))

    async def follow(self, channel: str) -> None:
        for _ in range(2):  # once more when the slot moved meanwhile
            shard = self._shard_of(channel)
            self._owner[channel] = shard
            try:
                await self._shards[shard].follow(channel)
                return
            except BrokerUnavailable:
                if not await self._refresh() or self._shard_of(channel) == shard:
                    raise

    def unfollow(self, channel: str) -> None:
        shard = self._owner.pop(channel, None)
        if shard in self._shards:
            self._shards[shard].unfollow(channel)

    def _shard_of(self, channel: str) -> str:
        """The master that owns the channel's slot, by the slot map; BrokerUnavailable when unknown."""
        if not self.connected:
            raise BrokerUnavailable("the sharded Pub/Sub connections to the cluster are not all up")
        try:
            node = self._cluster.get_node_from_key(self._keys.live(channel))
        except Exception as exc:  # SlotNotCoveredError: a shard is failing over
            raise BrokerUnavailable(f"no shard owns {channel!r} now: {describe(exc)}") from exc
        if node is None or node.name not in self._shards:
            raise BrokerUnavailable(f"the shard of {channel!r} has no Pub/Sub connection yet")
        return str(node.name)

    # -- routing --------------------------------------------------------------------------------

    async def _route_forever(self) -> None:
        backoff = Backoff(cap=_TROUBLE_CAP)
        while True:
            if await self._refresh():
                backoff.reset()
            else:
                await asyncio.sleep(backoff.failed())
                continue
            self._trouble.clear()
            wait = _TROUBLE_CAP if not self.connected else _CHECK_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._trouble.wait(), wait)

    async def _refresh(self) -> bool:
        """Read the slot map again and route by it; False when no node answered."""
        async with self._refreshing:  # the router, and a follow() that found its slot moved
            return await self._route()

    async def _route(self) -> bool:
        try:
            await asyncio.wait_for(self._cluster.nodes_manager.initialize(), self._settings.redis_timeout * 2)
        except Exception as exc:  # every node away, or one answering nonsense mid-failover
            log.warning("cannot read the cluster's slot map: %s", describe(exc))
            self._mapped = False
            return False
        masters = {str(node.name): node for node in self._cluster.get_primaries()}
        for name in set(self._shards) - set(masters):
            await self._close(name)
        for name, node in masters.items():
            if name not in self._shards:
                self._open(node)
        self._mapped = True
        self._move_strays()
        return True

    def _open(self, node: ClusterNode) -> None:
        client = self._made.node(node.host, int(node.port), "sub", False)
        shard = PubSubSupervisor(
            client, self._keys, self._settings, sharded=True, on_trouble=self._trouble.set
        )
        self._shards[str(node.name)] = shard
        if self._listener is not None:
            shard.start(self._listener)
        log.info("following the cluster shard at %s", node.name)

    async def _close(self, name: str) -> None:
        await self._shards.pop(name).stop()

    def _move_strays(self) -> None:
        """Every followed channel whose slot is now another master's goes there; once they are
        subscribed there, the hub reads the streams for what was announced meanwhile."""
        moves: list[tuple[PubSubSupervisor, str]] = []
        for channel, shard in list(self._owner.items()):
            try:
                node = self._cluster.get_node_from_key(self._keys.live(channel))
            except Exception:  # not covered now: the next refresh tries again
                continue
            if node is None or node.name == shard or node.name not in self._shards:
                continue
            self._owner[channel] = str(node.name)
            if shard in self._shards:
                self._shards[shard].unfollow(channel)
            moves.append((self._shards[str(node.name)], channel))
        if moves:
            log.info("%d followed channel(s) moved to another shard", len(moves))
            task = asyncio.create_task(self._adopt(moves))
            self._moves.add(task)
            task.add_done_callback(self._moves.discard)

    async def _adopt(self, moves: list[tuple[PubSubSupervisor, str]]) -> None:
        await asyncio.gather(*(shard.adopt(channel) for shard, channel in moves))
        if self._listener is not None:
            self._listener.on_resubscribed()
