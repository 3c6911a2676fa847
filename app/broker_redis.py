"""The Redis Streams broker (see :mod:`app.broker` for what it guarantees).

Connections per instance, whatever the number of channels and consumers:

- ``pub``: one connection; every publish of the instance goes through it, batched in pipelines;
- ``read``: up to three; stream reads (catch-up, hole filling, history), listings, pings;
- ``sub``: one Pub/Sub connection, owned by a supervisor task that reconnects with capped,
  jittered backoff and re-subscribes every followed channel.

Every connection carries a client name ``relay:<instance>:<role>`` (see ``CLIENT LIST``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, Final, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from app import metrics, streamid
from app.broker import (
    BrokerListener,
    ChannelInfo,
    Claimed,
    ConsumerInfo,
    Delivery,
    Entry,
    Page,
    Published,
    PublishRequest,
)
from app.errors import BrokerUnavailable, GroupMissing, StorageError
from app.keys import Keys
from app.settings import Settings
from app.streamid import StreamId

log = logging.getLogger("relay.broker")
T = TypeVar("T")

_UNAVAILABLE: Final = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
    TimeoutError,
)
_READ_CONNECTIONS: Final = 3
_SUBSCRIBE_CHUNK: Final = 1000
_PING_INTERVAL: Final = 5.0
_SCAN_CAP: Final = 10_000


def _lua(name: str) -> str:
    return resources.files("app").joinpath(f"lua/{name}.lua").read_text(encoding="utf-8")


_PUBLISH_SCRIPT: Final = _lua("publish")
_PUBLISH_SHA: Final = hashlib.sha1(_PUBLISH_SCRIPT.encode()).hexdigest()

ClientFactory = Callable[[str, int, int, bool], Redis]
"""``(role, max connections, retries, decode responses) -> client``."""


def _real_clients(settings: Settings) -> ClientFactory:
    assert settings.redis_url is not None
    url = settings.redis_url.get_secret_value()

    def make(role: str, connections: int, retries: int, decode: bool) -> Redis:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=connections,
            timeout=settings.redis_timeout,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            decode_responses=decode,
            client_name=f"relay:{settings.instance_name}:{role}",
            health_check_interval=30,
            retry=Retry(
                ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries, (redis_errors.ConnectionError,)
            ),
        )
        return Redis.from_pool(pool)

    return make


def _embedded_clients() -> ClientFactory:
    import fakeredis

    server = fakeredis.FakeServer()

    def make(role: str, connections: int, retries: int, decode: bool) -> Redis:
        client: Redis = fakeredis.aioredis.FakeRedis(server=server, decode_responses=decode)
        return client

    return make


class RedisBroker:
    def __init__(self, settings: Settings, clients: ClientFactory | None = None) -> None:
        if clients is None:
            clients = _embedded_clients() if settings.embedded else _real_clients(settings)
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        # no retry for writes: after a dropped connection the script may have run, and running
        # it again would store the messages twice
        self._pub = clients("pub", 1, 0, True)
        self._read = clients("read", _READ_CONNECTIONS, 1, True)
        # bytes: redis-py misparses PONG on a Pub/Sub connection that decodes responses
        self._sub = clients("sub", 1, 0, False)
        self._script_loaded = False
        self._claim = self._read.register_script(_lua("claim"))
        self._touch = self._read.register_script(_lua("touch"))
        self._lease = self._read.register_script(_lua("lease"))
        self._reap = self._read.register_script(_lua("reap"))
        self._trim = self._read.register_script(_PUBLISH_SCRIPT)
        self._dead_maxlen = str(settings.stream_maxlen)
        self._pubsub = _PubSubSupervisor(self._sub, self._keys, settings)
        self._publish_args: Final = (
            str(settings.stream_maxlen),
            str(int((settings.stream_max_age or 0) * 1000)),
            str(settings.idempotency_ttl),
        )

    @property
    def keys(self) -> Keys:
        return self._keys

    async def start(self, listener: BrokerListener) -> None:
        self._pubsub.start(listener)

    async def close(self) -> None:
        """Stop and disconnect, within a bounded time even when Redis does not answer."""
        await self._pubsub.stop()
        for client in (self._pub, self._read, self._sub):
            with contextlib.suppress(*_UNAVAILABLE):
                await asyncio.wait_for(client.aclose(), self._settings.redis_timeout)

    async def ping(self) -> None:
        if not self._pubsub.connected:
            raise BrokerUnavailable("the Pub/Sub connection to Redis is down")
        await _checked(self._read.ping(), "ping")

    # -- publishing -----------------------------------------------------------------------------

    async def publish(self, requests: Sequence[PublishRequest]) -> list[Published | Exception]:
        replies = await self._run_publish(requests)
        if replies and all(isinstance(r, redis_errors.NoScriptError) for r in replies):
            replies = await self._run_publish(requests)  # SCRIPT FLUSH: nothing ran; load and retry
        return [_published(reply) for reply in replies]

    async def _run_publish(self, requests: Sequence[PublishRequest]) -> list[Any]:
        """One round trip: SCRIPT LOAD when the script may be missing, then one EVALSHA per request."""
        pipe = self._pub.pipeline(transaction=False)
        load = not self._script_loaded
        if load:
            pipe.script_load(_PUBLISH_SCRIPT)
        for request in requests:
            pipe.execute_command("EVALSHA", _PUBLISH_SHA, *self._publish_keys_and_args(request))
        try:
            replies: list[Any] = await _checked(pipe.execute(raise_on_error=False), "publish")
        except BrokerUnavailable:
            self._script_loaded = False  # a new connection may mean a restarted Redis
            raise
        replies = replies[1:] if load else replies
        self._script_loaded = not any(isinstance(r, redis_errors.NoScriptError) for r in replies)
        return replies

    def _publish_keys_and_args(self, request: PublishRequest) -> list[str | int]:
        keys = self._keys
        channel = request.channel
        names = [keys.stream(channel), keys.trimmed(channel), keys.live(channel)]
        if request.idempotency_key is not None:
            names.append(keys.idempotency(channel, request.idempotency_key))
        return [len(names), *names, *self._publish_args, *request.data]

    # -- reading --------------------------------------------------------------------------------

    async def read(
        self, channel: str, after: StreamId, *, until: StreamId | None, count: int, report_gap: bool = True
    ) -> Page:
        end = "+" if until is None else streamid.format_id(until)
        pipe = self._read.pipeline(transaction=True)
        pipe.get(self._keys.trimmed(channel))
        pipe.xrange(self._keys.stream(channel), f"({streamid.format_id(after)}", end, count=count)
        pipe.exists(self._keys.stream(channel))
        watermark, raw, exists = await _checked(pipe.execute(), "read")
        lost_until = None
        if report_gap and watermark is not None:
            trimmed = streamid.validate(str(watermark))  # None if someone else wrote the key
            if trimmed is not None and trimmed > after:
                lost_until = trimmed
        entries: list[Entry] = [(entry_id, fields.get("data", "null")) for entry_id, fields in raw]
        return Page(entries, lost_until, bool(exists))

    async def last_id(self, channel: str) -> StreamId:
        raw = await _checked(self._read.xrevrange(self._keys.stream(channel), count=1), "last_id")
        return streamid.parse(str(raw[0][0])) if raw else streamid.ZERO

    async def channels(self, limit: int) -> list[ChannelInfo]:
        names: list[str] = []
        scan = self._read.scan_iter(match=self._keys.stream_pattern(), count=1000, _type="STREAM")
        try:
            async for key in scan:
                names.append(key)
                if len(names) >= _SCAN_CAP:
                    break
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"Redis did not answer SCAN: {exc}") from exc
        names = sorted(names)[:limit]
        pipe = self._read.pipeline(transaction=False)
        for key in names:
            pipe.xinfo_stream(key)
        infos = await _checked(pipe.execute(raise_on_error=False), "channels")
        return [
            _channel_info(self._keys.channel_of_stream(key), info)
            for key, info in zip(names, infos, strict=True)
            if isinstance(info, dict)
        ]

    # -- consumer groups ------------------------------------------------------------------------

    async def group_create(self, channel: str, group: str, start: StreamId | None) -> None:
        at = "$" if start is None else streamid.format_id(start)
        try:
            await _checked(
                self._read.xgroup_create(self._keys.stream(channel), group, id=at, mkstream=True),
                "group_create",
            )
        except StorageError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def group_read(self, channel: str, group: str, consumer: str, count: int) -> list[Delivery]:
        key = self._keys.stream(channel)
        raw: Any = await _group_call(
            self._read.xreadgroup(group, consumer, {key: ">"}, count=count), "group_read"
        )
        if not raw:
            return []
        return [Delivery(entry_id, fields.get("data", "null"), 1) for entry_id, fields in raw[0][1]]

    async def group_ack(self, channel: str, group: str, ids: Sequence[str]) -> None:
        await _group_call(self._read.xack(self._keys.stream(channel), group, *ids), "group_ack")

    async def group_touch(self, channel: str, group: str, consumer: str, ids: Sequence[str]) -> None:
        await _group_call(
            self._touch(keys=[self._keys.stream(channel)], args=[group, consumer, *ids]), "group_touch"
        )

    async def group_claim(
        self, channel: str, group: str, consumer: str, *, min_idle_ms: int, max_deliveries: int, count: int
    ) -> Claimed:
        keys = [self._keys.stream(channel), self._keys.dead(channel)]
        args: list[str | int] = [group, consumer, min_idle_ms, max_deliveries, count, self._dead_maxlen]
        claimed, dead = await _group_call(self._claim(keys=keys, args=args), "group_claim")
        deliveries = [Delivery(str(i), str(data), int(n)) for i, data, n in claimed]
        return Claimed(deliveries, [str(i) for i in dead])

    async def heartbeat(self, name: str, ttl_ms: int) -> None:
        await _checked(self._read.set(self._keys.alive(name), "1", px=ttl_ms), "heartbeat")

    # -- housekeeping (workers/janitor.py) -------------------------------------------------------

    async def group_consumers(self, channel: str) -> list[ConsumerInfo]:
        key = self._keys.stream(channel)
        out: list[ConsumerInfo] = []
        for group in await _checked(self._read.xinfo_groups(key), "janitor"):
            name = str(group["name"])
            for consumer in await _checked(self._read.xinfo_consumers(key, name), "janitor"):
                out.append(
                    ConsumerInfo(name, str(consumer["name"]), int(consumer["pending"]), int(consumer["idle"]))
                )
        return out

    async def alive(self, names: Sequence[str]) -> set[str]:
        """Which of these processes have a heartbeat now."""
        pipe = self._read.pipeline(transaction=False)
        for name in names:
            pipe.exists(self._keys.alive(name))
        found = await _checked(pipe.execute(), "janitor")
        return {name for name, exists in zip(names, found, strict=True) if exists}

    async def reap_consumer(self, channel: str, group: str, consumer: str, min_idle_ms: int) -> bool:
        """Remove the consumer if its process is gone, it holds nothing and has been idle for
        ``min_idle_ms`` (checked and done atomically); True when removed."""
        keys = [self._keys.stream(channel), self._keys.alive(consumer)]
        return bool(await _group_call(self._reap(keys=keys, args=[group, consumer, min_idle_ms]), "janitor"))

    async def lease(self, holder: str, ttl_ms: int) -> bool:
        """Take or keep the janitor's lease; True while ``holder`` has it."""
        return bool(
            await _checked(self._lease(keys=[self._keys.janitor_lease()], args=[holder, ttl_ms]), "janitor")
        )

    async def trim(self, channel: str) -> int:
        """Apply retention to a channel that may get no new messages; how many entries went."""
        keys = [self._keys.stream(channel), self._keys.trimmed(channel), self._keys.live(channel)]
        reply = await _checked(self._trim(keys=keys, args=list(self._publish_args)), "trim")
        return int(reply[1])

    # -- following announcements ----------------------------------------------------------------

    async def follow(self, channel: str) -> StreamId:
        await self._pubsub.follow(channel)
        return await self.last_id(channel)

    def unfollow(self, channel: str) -> None:
        self._pubsub.unfollow(channel)


class _PubSubSupervisor:
    """Owns the Pub/Sub connection: (re)connects, (re)subscribes, reads, pings.

    ``follow``/``unfollow`` only queue a command; one sender task sends them in call order, so an
    UNSUBSCRIBE and a later SUBSCRIBE of the same channel can never swap.
    """

    def __init__(self, client: Redis, keys: Keys, settings: Settings) -> None:
        self._client = client
        self._keys = keys
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
        self.connected = False

    def start(self, listener: BrokerListener) -> None:
        self._listener = listener
        self._task = asyncio.create_task(self._supervise(), name="relay-pubsub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, self._timeout * 2)

    async def follow(self, channel: str) -> None:
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

    def unfollow(self, channel: str) -> None:
        self._followed.discard(channel)
        # queued even while (re)connecting: a session that subscribed it before it was let go
        # unsubscribes it once connected (an UNSUBSCRIBE of a channel not subscribed is harmless)
        self._ops.append((False, channel))
        self._ops_ready.set()

    async def _supervise(self) -> None:
        backoff = ExponentialWithJitterBackoff(base=0.1, cap=5.0)
        failures = 0
        while True:
            try:
                await self._session()
            except Exception as exc:  # the session only ends by failing; CancelledError passes
                failures = 1 if self.connected else failures + 1
                reason = _describe(exc)
            finally:
                self._reset()
            delay = backoff.compute(failures)
            log.warning("Pub/Sub connection to Redis lost (%s); retrying in %.2fs", reason, delay)
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
            log.info("Pub/Sub connected; following %d channel(s)", len(names))
            assert self._listener is not None
            self._listener.on_resubscribed()
            tasks.append(asyncio.create_task(self._sender(pubsub), name="relay-pubsub-sender"))
            tasks.append(asyncio.create_task(self._pinger(pubsub), name="relay-pubsub-pinger"))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise BrokerUnavailable("Pub/Sub task ended")
        finally:
            self.connected = False  # at once: cleaning up below takes a moment
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):  # a dead connection must not hold the session open
                await asyncio.wait_for(pubsub.aclose(), self._timeout)  # type: ignore[no-untyped-call]

    def _reset(self) -> None:
        self.connected = False
        self._ops.clear()
        self._unconfirmed.clear()
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
        await pubsub.subscribe(*names)

    async def _reader(self, pubsub: PubSub) -> None:
        listener = self._listener
        assert listener is not None
        loop = asyncio.get_running_loop()
        self._heard = loop.time()
        while True:
            message = await pubsub.get_message(timeout=None)
            self._heard = loop.time()
            if message is None:
                continue
            kind = message["type"]
            if kind == "message":
                self._dispatch(listener, message["channel"], message["data"])
            elif kind == "subscribe":
                self._confirm(message["channel"])
            elif kind == "pong":
                pong = self._pongs.pop(message["data"], None)
                if pong is not None and not pong.done():
                    pong.set_result(None)

    def _dispatch(self, listener: BrokerListener, name: bytes, payload: bytes) -> None:
        parts = payload.decode().split("\0")
        if len(parts) % 2 == 0:
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
                    await pubsub.unsubscribe(*names)

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


async def _group_call(awaitable: Awaitable[T], operation: str) -> T:
    """A consumer-group command: a missing group (deleted, or Redis restarted empty) is GroupMissing."""
    try:
        return await _checked(awaitable, operation)
    except StorageError as exc:
        if "NOGROUP" in str(exc):
            raise GroupMissing(f"the consumer group does not exist: {exc}") from exc
        raise


async def _checked(awaitable: Awaitable[T], operation: str) -> T:
    """Await a Redis call, timed per ``operation``, turning its failures into the broker's errors."""
    started = time.perf_counter()
    try:
        return await awaitable
    except _UNAVAILABLE as exc:
        metrics.REDIS_ERRORS.labels(operation).inc()
        raise BrokerUnavailable(f"Redis did not answer: {_describe(exc)}") from exc
    except redis_errors.RedisError as exc:
        metrics.REDIS_ERRORS.labels(operation).inc()
        raise StorageError(f"Redis refused: {_describe(exc)}") from exc
    finally:
        metrics.REDIS_LATENCY.labels(operation).observe(time.perf_counter() - started)


def _published(reply: Any) -> Published | Exception:
    if isinstance(reply, redis_errors.NoScriptError):
        return BrokerUnavailable("the publish script was not loaded in Redis (SCRIPT FLUSH?); retry")
    if isinstance(reply, Exception):
        return StorageError(f"Redis refused the publish: {reply}")
    return Published([str(entry_id) for entry_id in reply[1:]], replayed=reply[0] == 1)


def _channel_info(name: str, info: dict[str, Any]) -> ChannelInfo:
    first = info.get("first-entry")
    return ChannelInfo(
        name=name,
        length=int(info["length"]),
        first_id=first[0] if first else None,
        last_id=str(info["last-generated-id"]),
        groups=int(info.get("groups", 0)),
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
