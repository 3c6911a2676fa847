"""The broker's Pub/Sub connection: (re)connected, (re)subscribed, read and pinged by one supervisor.

``follow``/``unfollow`` only queue a command; one sender task sends them in call order, so an
UNSUBSCRIBE and a later SUBSCRIBE of the same channel can never swap. After every (re)connection
the supervisor subscribes every followed channel again, waits until Redis confirms (a PING sent
after the SUBSCRIBEs is answered after them), and only then tells the listener, which reads the
streams for whatever was announced meanwhile. A PING every few seconds tells a dead connection
from a quiet one. Reconnecting waits at most half a second between tries: the instance is ready
(``/readyz``) only while this connection is up, so it comes back within that of Redis answering.

Sharded (one supervisor per shard of a cluster, :mod:`app.broker.shards`), announcements are
shard channels: ``SSUBSCRIBE`` one channel at a time (a command's channels must share a slot),
``smessage`` for announcements. When the shard stops owning a channel (a ``MOVED`` reply to
``SSUBSCRIBE``, or Redis unsubscribing it after its slot moved) the supervisor says so
(``on_trouble``) and its owner routes the channel again. Every supervisor also subscribes its
instance's control channel the classic way, on its own node only; nothing is ever published there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Final, Protocol

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.crc import key_slot

from app.backoff import Backoff
from app.broker.calls import describe
from app.broker.interface import BrokerListener
from app.broker.keys import Keys
from app.errors import BrokerUnavailable
from app.settings import Settings

log = logging.getLogger("relay.broker")

_SUBSCRIBE_CHUNK: Final = 1000
_PING_INTERVAL: Final = 5.0
# a try costs one refused or timed-out connect: cheap enough to repeat twice a second, and readiness
# (hence the balancer's traffic) waits on it after every outage
_RECONNECT_CAP: Final = 0.5
_PRESENCE: Final = b"presence\0"  # a join or leave (presence.lua), not new entries


class Announcements(Protocol):
    """How the broker follows announcements: one supervisor, or one per shard."""

    @property
    def connected(self) -> bool:
        """True while announcements of every followed channel flow."""

    def start(self, listener: BrokerListener) -> None: ...

    async def stop(self) -> None:
        """Stop following and close every connection, within a bounded time."""

    async def follow(self, channel: str) -> None:
        """Subscribe the channel's announcements; return once Redis confirmed."""

    def unfollow(self, channel: str) -> None: ...


class PubSubSupervisor:
    """Owns the Pub/Sub connection; ``connected`` while announcements flow."""

    def __init__(
        self,
        client: Redis,
        keys: Keys,
        settings: Settings,
        *,
        sharded: bool = False,
        on_trouble: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._sharded = sharded
        self._on_trouble = on_trouble or (lambda: None)
        self._leaving: Counter[str] = Counter()  # SUNSUBSCRIBEs sent, not yet confirmed
        self._refused: set[str] = set()
        self._up = asyncio.Event()
        self._timeout = settings.redis_timeout
        self._control = keys.instance(settings.instance_name)
        self._listener: BrokerListener | None = None
        self._task: asyncio.Task[None] | None = None
        self._followed: set[str] = set()
        self._ops: deque[tuple[bool, str]] = deque()  # (subscribe?, channel)
        self._ops_ready = asyncio.Event()
        self._unconfirmed: Counter[str] = Counter()
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._pongs: dict[bytes, asyncio.Future[None]] = {}
        self._pings = 0
        self._heard = 0.0
        self._sessions = 0  # sessions that got connected
        self.connected = False

    def start(self, listener: BrokerListener) -> None:
        self._listener = listener
        self._task = asyncio.create_task(self._supervise(), name="relay-pubsub")

    async def stop(self) -> None:
        """Stop following and close the connection, within a bounded time."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, self._timeout * 2)
        with contextlib.suppress(Exception):  # Redis may be gone
            await asyncio.wait_for(self._client.aclose(), self._timeout)

    async def follow(self, channel: str) -> None:
        """Subscribe the channel's announcements; return once Redis confirmed."""
        if not self.connected:
            raise BrokerUnavailable("the Pub/Sub connection to Redis is down")
        self._followed.add(channel)
        name = self._keys.live(channel)
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(name, []).append(waiter)
        self._unconfirmed[name] += 1  # counted now: an earlier SUBSCRIBE's reply must not resolve this one
        self._ops.append((True, channel))
        self._ops_ready.set()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self._timeout)
        except TimeoutError as exc:
            raise BrokerUnavailable(f"Redis did not confirm SUBSCRIBE {name} in time") from exc

    async def adopt(self, channel: str) -> None:
        """Follow a channel that another shard's connection followed until now; returns once it
        is subscribed here, or once it is certain that the next session subscribes it (and tells
        the listener), or once Redis refused it (see :meth:`take_refused`: the owner routes it again)."""
        self._followed.add(channel)  # a session starting now subscribes it with the others
        try:
            async with asyncio.timeout(self._timeout):
                await self._up.wait()
            await self.follow(channel)  # a second SSUBSCRIBE of a channel subscribed is harmless
        except (TimeoutError, BrokerUnavailable):
            return  # down: the next session subscribes every followed channel, then tells

    def take_refused(self) -> set[str]:
        """The channels Redis refused or let go here since the last call (their slot is another
        shard's): no longer followed here."""
        refused, self._refused = self._refused, set()
        return refused

    def unfollow(self, channel: str) -> None:
        self._followed.discard(channel)
        # queued even while (re)connecting: a session that subscribed it before it was let go
        # unsubscribes it once connected (an UNSUBSCRIBE of a channel not subscribed is harmless)
        self._ops.append((False, channel))
        self._ops_ready.set()

    async def _supervise(self) -> None:
        backoff = Backoff(cap=_RECONNECT_CAP)
        while True:
            sessions = self._sessions
            try:
                await self._session()
            except Exception as exc:  # the session only ends by failing; CancelledError passes
                if self._sessions != sessions:
                    backoff.reset()  # it had been up: start again from the shortest wait
                reason = describe(exc)
            finally:
                self._reset()
            self._on_trouble()
            delay = backoff.failed()
            if backoff.failures & (backoff.failures - 1) == 0:  # tries are frequent: log the 1st, 2nd, 4th...
                log.warning(
                    "Pub/Sub connection to Redis down (%s); %d failure(s) in a row, next try in %.2fs",
                    reason,
                    backoff.failures,
                    delay,
                )
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        pubsub = self._client.pubsub()
        tasks: list[asyncio.Task[None]] = []
        try:
            await pubsub.subscribe(self._control)
            tasks.append(asyncio.create_task(self._reader(pubsub), name="relay-pubsub-reader"))
            names = [self._keys.live(channel) for channel in sorted(self._followed)]
            for start in range(0, len(names), _SUBSCRIBE_CHUNK):
                await self._subscribe(pubsub, names[start : start + _SUBSCRIBE_CHUNK], count=True)
            await self._barrier(pubsub)
            self.connected = True
            self._up.set()
            self._sessions += 1
            log.info("Pub/Sub connected; following %d channel(s)", len(names))
            if self._listener is not None:
                self._listener.on_resubscribed()
            tasks.append(asyncio.create_task(self._sender(pubsub), name="relay-pubsub-sender"))
            tasks.append(asyncio.create_task(self._pinger(pubsub), name="relay-pubsub-pinger"))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise BrokerUnavailable("Pub/Sub task ended")
        finally:
            self.connected = False  # at once: cleaning up below takes a moment
            self._up.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):  # a dead connection must not hold the session open
                await asyncio.wait_for(pubsub.aclose(), self._timeout)  # type: ignore[no-untyped-call, unused-ignore]

    def _reset(self) -> None:
        self.connected = False
        self._ops.clear()
        self._unconfirmed.clear()
        self._leaving.clear()
        for waiters in self._waiting.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(BrokerUnavailable("the Pub/Sub connection to Redis dropped"))
        self._waiting.clear()
        for pong in self._pongs.values():
            pong.cancel()
        self._pongs.clear()

    async def _subscribe(self, pubsub: PubSub, names: list[str], *, count: bool) -> None:
        if count:
            for name in names:
                self._unconfirmed[name] += 1
        if not self._sharded:
            await pubsub.subscribe(*names)
            return
        for name in names:
            await pubsub.ssubscribe(name)

    async def _unsubscribe(self, pubsub: PubSub, names: list[str]) -> None:
        if not self._sharded:
            await pubsub.unsubscribe(*names)
            return
        for name in names:
            self._leaving[name] += 1
            await pubsub.sunsubscribe(name)

    async def _reader(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        self._heard = loop.time()
        connection = pubsub.connection
        assert connection is not None  # the control channel is subscribed before the reader starts
        # the pinger tells whether the connection lives; redis-py's own check would ask the loop
        # for the time after every message read (a system call each on Python 3.11: app.wakeup)
        connection.health_check_interval = 0
        while True:
            try:
                # the connection's own read, as redis-py's get_message(timeout=None) makes it (no
                # timeout: the pinger tells a dead connection from a quiet one), without the
                # retry wrapper, timing hooks and dict get_message builds around every message
                reply = await connection.read_response(
                    timeout=math.inf, disconnect_on_error=False, push_request=True
                )
            except redis_errors.ResponseError as exc:
                if not self._sharded:
                    raise  # one Redis: the session starts again and subscribes everything
                # an SSUBSCRIBE sent to a node that lost the slot (MOVED), or refused for now
                # (CLUSTERDOWN, TRYAGAIN: whose, unknown)
                self._refuse(exc.slot_id if isinstance(exc, redis_errors.MovedError) else None, exc)
                continue
            self._heard = loop.time()
            kind = reply[0] if isinstance(reply, list) else None  # RESP3: a push, a list
            if kind == b"message" or kind == b"smessage":  # nearly everything: handled here
                self._dispatch(reply[1], reply[2])
                continue
            # the rest through redis-py, which keeps its account of the subscriptions
            message = await pubsub.handle_message(reply)
            if message is not None:
                self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "subscribe" or kind == "ssubscribe":
            self._confirm(message["channel"])
        elif kind == "sunsubscribe":
            self._left(message["channel"].decode())
        elif kind == "pong":
            pong = self._pongs.pop(message["data"], None)
            if pong is not None and not pong.done():
                pong.set_result(None)

    def _dispatch(self, name: bytes, payload: bytes) -> None:
        listener = self._listener
        if payload.startswith(_PRESENCE):
            parts = payload.decode().split("\0", 2)
            if listener is not None and len(parts) == 3:
                listener.on_presence(self._keys.channel_of_live(name.decode()), parts[1], parts[2])
            elif listener is not None:
                log.warning("ignoring a malformed presence announcement on %r", name)
            return
        parts = payload.decode().split("\0")
        if listener is None or len(parts) % 2 == 0:
            log.warning("ignoring a malformed announcement on %r", name)
            return
        channel = self._keys.channel_of_live(name.decode())
        try:
            listener.on_announcement(channel, parts[0], list(zip(parts[1::2], parts[2::2], strict=True)))
        except ValueError:  # not ours: the stream is the truth, the next hole check reads it
            log.warning("ignoring a malformed announcement on %r", name)

    def _confirm(self, raw_name: bytes) -> None:
        name = raw_name.decode()
        self._unconfirmed[name] -= 1
        if self._unconfirmed[name] > 0:
            return
        del self._unconfirmed[name]
        for waiter in self._waiting.pop(name, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _refuse(self, slot: int | None, error: Exception) -> None:
        """Redis refused SSUBSCRIBEs (the slot is elsewhere, or the cluster is down): those not yet
        confirmed (of ``slot``; None: all) fail, and go to the owner to be routed again."""
        log.info("Redis refused to subscribe announcements here (%s); routing them again", describe(error))
        for name in [n for n in self._unconfirmed if slot is None or key_slot(n.encode()) == slot]:
            del self._unconfirmed[name]
            self._drop(name)
            for waiter in self._waiting.pop(name, ()):
                if not waiter.done():
                    waiter.set_exception(BrokerUnavailable(f"Redis refused SSUBSCRIBE {name}: {error}"))
        self._on_trouble()

    def _left(self, name: str) -> None:
        if self._leaving[name] > 0:
            self._leaving[name] -= 1
            if not self._leaving[name]:
                del self._leaving[name]
            return
        # not asked for: Redis let the channel go, its slot moved to another shard
        log.info("Redis unsubscribed %s (its slot moved); routing it again", name)
        self._drop(name)
        self._on_trouble()

    def _drop(self, name: str) -> None:
        channel = self._keys.channel_of_live(name)
        if channel in self._followed:
            self._followed.discard(channel)
            self._refused.add(channel)

    async def _sender(self, pubsub: PubSub) -> None:
        while True:
            await self._ops_ready.wait()
            self._ops_ready.clear()
            while self._ops:
                subscribe, channel = self._ops.popleft()
                names = [self._keys.live(channel)]
                while self._ops and self._ops[0][0] == subscribe:
                    names.append(self._keys.live(self._ops.popleft()[1]))
                if subscribe:
                    await self._subscribe(pubsub, names, count=False)  # counted by follow()
                else:
                    await self._unsubscribe(pubsub, names)

    async def _pinger(self, pubsub: PubSub) -> None:
        """A quiet connection and a dead one look alike: PING regularly, and give up on the
        connection when nothing at all (PONG or message) has come for too long."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_PING_INTERVAL)
            silent = loop.time() - self._heard
            if silent > _PING_INTERVAL + self._timeout:
                raise BrokerUnavailable(f"nothing heard on the Pub/Sub connection for {silent:.1f}s")
            await pubsub.ping(b"relay-keepalive")

    async def _barrier(self, pubsub: PubSub) -> None:
        """PING and wait for its PONG: Redis has processed every command sent before it."""
        self._pings += 1
        token = b"relay-ping-%d" % self._pings
        pong = asyncio.get_running_loop().create_future()
        self._pongs[token] = pong
        await pubsub.ping(token)
        try:
            await asyncio.wait_for(pong, self._timeout)
        except TimeoutError as exc:
            raise BrokerUnavailable("Redis did not answer PING on the Pub/Sub connection") from exc
