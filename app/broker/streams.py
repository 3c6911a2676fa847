"""The Redis Streams broker (see :mod:`app.broker.interface` for what it guarantees).

Connections per instance, whatever the number of channels and consumers:

- ``pub``: one connection; every publish of the instance goes through it, a batch per round trip
  (a :class:`~app.broker.line.Line`; on a cluster, a pipeline per shard);
- ``read``: up to three; stream reads (catch-up, hole filling, history), listings, groups, pings;
- ``sub``: one Pub/Sub connection, owned by a supervisor (:mod:`app.broker.pubsub`).

Every connection carries a client name ``relay:<instance>:<role>`` (see ``CLIENT LIST``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Sequence
from typing import Any, Final, cast

from redis import exceptions as redis_errors
from redis.asyncio import Redis, RedisCluster

from app.broker import clients, scripts
from app.broker.calls import UNAVAILABLE, checked, group_call, passing
from app.broker.interface import (
    BrokerListener,
    ChannelInfo,
    Claimed,
    Delivery,
    Entry,
    Page,
    PresenceChange,
    Published,
    PublishRequest,
)
from app.broker.keys import Keys
from app.broker.line import Line
from app.broker.pubsub import Announcements, PubSubSupervisor
from app.broker.shards import ShardedPubSub
from app.errors import BrokerUnavailable, StorageError
from app.protocol import streamid
from app.protocol.streamid import StreamId
from app.settings import Settings

_READ_CONNECTIONS: Final = 3
_SCAN_CAP: Final = 10_000


def retention_args(settings: Settings, sharded: bool) -> tuple[str, str, str, str]:
    """ARGV[1..4] of ``publish.lua``: MAXLEN, max age in ms, idempotency window in seconds, and
    the command that announces (sharded Pub/Sub on a cluster)."""
    return (
        str(settings.stream_maxlen),
        str(int((settings.stream_max_age or 0) * 1000)),
        str(settings.idempotency_ttl),
        announcer(sharded),
    )


def announcer(sharded: bool) -> str:
    """The command the scripts announce with: a cluster copies classic Pub/Sub to every node."""
    return "SPUBLISH" if sharded else "PUBLISH"


class RedisBroker:
    """A :class:`app.broker.interface.Broker` on Redis Streams and Pub/Sub."""

    def __init__(self, settings: Settings, made: clients.Clients | None = None) -> None:
        made = made or clients.for_settings(settings)
        self._made = made
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        # no retry for writes: after a dropped connection the script may have run, and running
        # it again would store the messages twice
        self._pub = made.make("pub", 1, 0, True, timed=made.sharded)
        self._read = made.make("read", _READ_CONNECTIONS, 1, True)
        self._last_ids = _LastIds(self._read, self._keys)
        self._cluster = cast(RedisCluster, self._pub) if made.sharded else None
        self._ack_replicas = settings.ack_replicas
        # a little under the socket timeout, so that Redis answers before the socket gives up
        self._wait_ms = max(1, int(settings.redis_timeout * 750))
        # a round trip ending in WAIT may wait that long on top of its own work
        deadline = settings.redis_timeout + (self._wait_ms / 1000 if self._ack_replicas else 0)
        asked = len(settings.redis_sentinels) + 1  # behind sentinels, connecting asks them in turn
        self._line = (
            None
            if made.sharded
            else Line(self._pub, deadline, connect_timeout=settings.redis_timeout * asked)
        )
        self._script_loaded = False
        self._claim = self._read.register_script(scripts.CLAIM)
        self._touch = self._read.register_script(scripts.TOUCH)
        self._presence = self._read.register_script(scripts.PRESENCE)
        self._prune = self._read.register_script(scripts.PRESENCE_PRUNE)
        self._dead_maxlen = str(settings.stream_maxlen)
        self._pubsub: Announcements = (
            ShardedPubSub(made, self._keys, settings)
            if made.sharded
            else PubSubSupervisor(made.make("sub", 1, 0, False), self._keys, settings)
        )
        self._publish_args: Final = retention_args(settings, made.sharded)
        self._announcer = announcer(made.sharded)

    @property
    def keys(self) -> Keys:
        return self._keys

    async def start(self, listener: BrokerListener) -> None:
        self._pubsub.start(listener)

    async def close(self) -> None:
        """Stop and disconnect, within a bounded time even when Redis does not answer."""
        await self._pubsub.stop()
        self._last_ids.close()
        if self._line is not None:
            await self._line.close()
        for client in (self._pub, self._read):
            await close_client(client, self._settings.redis_timeout)
        await self._made.close()

    async def ping(self) -> None:
        if not self._pubsub.connected:
            raise BrokerUnavailable("the Pub/Sub connection to Redis is down")
        await checked(self._read.ping(), "ping")

    # -- publishing -----------------------------------------------------------------------------

    async def publish(self, requests: Sequence[PublishRequest]) -> list[Published | Exception]:
        if not requests:
            return []
        replies = await self._run_publish(requests)
        retry = [] if self._script_loaded else _script_missing(requests, replies)
        if retry:  # a Redis (or a shard's new master) without the script: none of those ran
            try:
                again = await self._run_publish([requests[i] for i in retry])
            except BrokerUnavailable as exc:  # only those: the others' results stand
                again = [exc] * len(retry)
            for i, reply in zip(retry, again, strict=True):
                replies[i] = reply
        return [_published(reply) for reply in replies]

    async def _run_publish(self, requests: Sequence[PublishRequest]) -> list[Any]:
        """One round trip (on a cluster, one per shard written to, all at once: a failing shard
        fails only its own requests). Raises BrokerUnavailable when nothing could be sent."""
        if self._cluster is None:
            try:
                replies = await self._run_on("", requests)
            except BrokerUnavailable:
                self._script_loaded = False  # a new connection may mean a restarted Redis
                raise
            self._script_loaded = not any(isinstance(r, redis_errors.NoScriptError) for r in replies)
            return replies
        groups = await self._by_node(requests)
        runs = (self._run_on(node, [requests[i] for i in held]) for node, held in groups.items())
        with clients.self_bounded():  # at most one pipeline per node at a time: the publisher's
            outcomes = await asyncio.gather(*(_outcome(run) for run in runs))
        replies = [None] * len(requests)
        failed = [outcome for outcome in outcomes if isinstance(outcome, BrokerUnavailable)]
        for held, outcome in zip(groups.values(), outcomes, strict=True):
            got = [outcome] * len(held) if isinstance(outcome, BrokerUnavailable) else outcome
            for i, reply in zip(held, got, strict=True):
                replies[i] = reply
        self._script_loaded = not failed and not any(
            isinstance(r, redis_errors.NoScriptError) for r in replies
        )
        if failed or any(isinstance(r, redis_errors.RedisError) and passing(r) for r in replies):
            await self._reroute()
        if len(failed) == len(groups):
            raise failed[0]
        return replies

    async def _run_on(self, node: str, requests: Sequence[PublishRequest]) -> list[Any]:
        """On one node: SCRIPT LOAD when the script may be missing, one EVALSHA per request, then
        (``RELAY_ACK_REPLICAS``) one WAIT, all in one round trip on the node's one connection."""
        commands: list[tuple[Any, ...]] = []
        load = not self._script_loaded
        if load:
            commands.append(("SCRIPT", "LOAD", scripts.PUBLISH))
        for request in requests:
            commands.append(("EVALSHA", scripts.PUBLISH_SHA, *self._publish_keys_and_args(request)))
        if self._ack_replicas:
            commands.append(("WAIT", self._ack_replicas, self._wait_ms))
        if self._line is not None:
            replies = await checked(self._line.round_trip(commands), "publish")
        else:
            replies = await checked(self._pipelined(node, commands), "publish")
        stored = replies[int(load) : int(load) + len(requests)]
        if not self._ack_replicas:
            return stored
        return [self._replicated(reply, replies[-1]) for reply in stored]

    async def _pipelined(self, node: str, commands: list[tuple[Any, ...]]) -> list[Any]:
        """A cluster node's round trip: its commands without a key go to ``node``. Redirections
        (MOVED, ASK, TRYAGAIN) come back as the requests' errors, "not now": followed here, a
        request would run after this node's WAIT, elsewhere, and out of its channel's order."""
        target = self._target(node)
        pipe = self._pub.pipeline(transaction=False)
        for command in commands:
            keyless = command[0] in ("SCRIPT", "WAIT")
            pipe.execute_command(*command, **(target if keyless else {}))
        replies: list[Any] = await cast(Any, pipe).execute(raise_on_error=False, allow_redirections=False)
        return replies

    def _replicated(self, reply: Any, confirmed: Any) -> Any:
        """The reply of a stored request, or why its replicas are not known to have it."""
        if isinstance(reply, Exception):
            return reply
        if isinstance(confirmed, Exception):
            return BrokerUnavailable(f"Redis did not say whether replicas have the entries: {confirmed}")
        if int(confirmed) < self._ack_replicas:
            return BrokerUnavailable(
                f"{confirmed} of {self._ack_replicas} replica(s) confirmed the entries within"
                f" {self._wait_ms} ms (RELAY_ACK_REPLICAS); retry"
            )
        return reply

    async def _reroute(self) -> None:
        """A shard failed: read the slot map again, so that the next batch goes to its new master
        (redis-py's cluster pipeline does not, when it may not retry)."""
        assert self._cluster is not None
        with contextlib.suppress(Exception):  # no node answers: the next failure tries again
            await asyncio.wait_for(self._cluster.nodes_manager.initialize(), self._settings.redis_timeout)

    async def _by_node(self, requests: Sequence[PublishRequest]) -> dict[str, list[int]]:
        """The requests' indexes, by the name of the node their channel lives on ("": unknown)."""
        groups: dict[str, list[int]] = {}
        for i, node in enumerate(await self._nodes_of(requests)):
            groups.setdefault(node, []).append(i)
        return groups

    async def _nodes_of(self, requests: Sequence[PublishRequest]) -> list[str]:
        """Per request, the name of the node that owns its channel, by the slot map ("": unknown)."""
        assert self._cluster is not None
        await checked(self._cluster.initialize(), "publish")  # at once when done: the map is kept
        stream, owner = self._keys.stream, self._cluster.get_node_from_key
        names: list[str] = []
        for request in requests:
            try:
                names.append(str(getattr(owner(stream(request.channel)), "name", "")))
            except (redis_errors.RedisError, redis_errors.RedisClusterException):  # not covered now
                names.append("")
        return names

    def _target(self, node: str) -> dict[str, Any]:
        """Where a pipeline's commands without a key (SCRIPT LOAD, WAIT) go: the node written to."""
        if self._cluster is None:
            return {}
        found = self._cluster.get_node(node_name=node) if node else None
        if found is None:  # a WAIT sent elsewhere would count replicas of no write
            raise BrokerUnavailable(f"no shard of the cluster owns the channel now ({node or 'unknown'})")
        return {"target_nodes": found}

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
        watermark, raw, exists = await checked(pipe.execute(), "read")
        lost_until = None
        if report_gap and watermark is not None:
            trimmed = streamid.validate(str(watermark))  # None if someone else wrote the key
            if trimmed is not None and trimmed > after:
                lost_until = trimmed
        entries: list[Entry] = [(entry_id, fields.get("data", "null")) for entry_id, fields in raw]
        return Page(entries, lost_until, bool(exists))

    async def last_id(self, channel: str) -> StreamId:
        return await self._last_ids.get(channel)

    async def channels(self, limit: int) -> list[ChannelInfo]:
        return await list_channels(self._read, self._keys, limit)

    # -- following announcements ----------------------------------------------------------------

    async def follow(self, channel: str) -> StreamId:
        await self._pubsub.follow(channel)
        return await self.last_id(channel)

    def unfollow(self, channel: str) -> None:
        self._pubsub.unfollow(channel)

    # -- consumer groups ------------------------------------------------------------------------

    async def group_create(self, channel: str, group: str, start: StreamId | None) -> None:
        at = "$" if start is None else streamid.format_id(start)
        try:
            await checked(
                self._read.xgroup_create(self._keys.stream(channel), group, id=at, mkstream=True),
                "group_create",
            )
        except StorageError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def group_read(self, channel: str, group: str, consumer: str, count: int) -> list[Delivery]:
        key = self._keys.stream(channel)
        raw: Any = await group_call(
            self._read.xreadgroup(group, consumer, {key: ">"}, count=count), "group_read"
        )
        if not raw:
            return []
        return [Delivery(entry_id, fields.get("data", "null"), 1) for entry_id, fields in raw[0][1]]

    async def group_ack(self, channel: str, group: str, ids: Sequence[str]) -> None:
        await group_call(self._read.xack(self._keys.stream(channel), group, *ids), "group_ack")

    async def group_touch(self, channel: str, group: str, consumer: str, ids: Sequence[str]) -> None:
        await group_call(
            self._touch(keys=[self._keys.stream(channel)], args=[group, consumer, *ids]), "group_touch"
        )

    async def group_claim(
        self, channel: str, group: str, consumer: str, *, min_idle_ms: int, max_deliveries: int, count: int
    ) -> Claimed:
        keys = [self._keys.stream(channel), self._keys.dead(channel)]
        args: list[str | int] = [group, consumer, min_idle_ms, max_deliveries, count, self._dead_maxlen]
        claimed, dead = await group_call(self._claim(keys=keys, args=args), "group_claim")
        deliveries = [Delivery(str(i), str(data), int(n)) for i, data, n in claimed]
        return Claimed(deliveries, [str(i) for i in dead])

    async def heartbeat(self, name: str, ttl_ms: int) -> None:
        await checked(self._read.set(self._keys.alive(name), "1", px=ttl_ms), "heartbeat")

    # -- presence -------------------------------------------------------------------------------

    async def presence_change(self, changes: Sequence[PresenceChange]) -> list[str | None]:
        replies = await self._run_presence(changes)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, redis_errors.NoScriptError)]
        if missing:  # a Redis (or a shard's new master) without the script: those did not run
            await checked(self._read.script_load(scripts.PRESENCE), "presence_change")
            again = await self._run_presence([changes[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, redis_errors.RedisError) and passing(reply):
                raise BrokerUnavailable(f"Redis cannot write now: {reply}")
        return [str(reply) if isinstance(reply, Exception) else None for reply in replies]

    async def _run_presence(self, changes: Sequence[PresenceChange]) -> list[Any]:
        keys = self._keys
        pipe = self._read.pipeline(transaction=False)
        for change in changes:
            op, stored = ("join", f"{change.epoch} {change.entry}") if change.join else ("leave", "")
            channel = change.channel
            names = (keys.presence(channel), keys.live(channel))
            args = (op, change.client, stored, change.frame, self._announcer)
            pipe.execute_command("EVALSHA", self._presence.sha, 2, *names, *args)
        replies: list[Any] = await checked(pipe.execute(raise_on_error=False), "presence_change")
        return replies

    async def presence_list(self, channel: str) -> dict[str, str]:
        key = self._keys.presence(channel)
        stored: dict[str, str] = await checked(self._read.hgetall(key), "presence_list")  # type: ignore[arg-type]
        boots = sorted({client.partition(".")[0] for client in stored})
        if not boots:
            return {}
        pipe = self._read.pipeline(transaction=False)
        for boot in boots:
            pipe.get(self._keys.present(boot))
        beats = await checked(pipe.execute(), "presence_list")
        epochs = {boot: beat.partition(" ")[0] for boot, beat in zip(boots, beats, strict=True) if beat}
        present: dict[str, str] = {}
        dead: list[str] = []
        for client, value in stored.items():
            epoch, _, entry = value.partition(" ")
            if epochs.get(client.partition(".")[0]) == epoch:
                present[client] = entry
            else:
                dead += (client, value)
        if dead:  # their process died without a word, or wrote them again since: tidy up
            await checked(self._prune(keys=[key], args=dead), "presence_list")
        return present

    async def presence_beat(self, boot: str, value: str, ttl_ms: int) -> str | None:
        key = self._keys.present(boot)
        previous = await checked(self._read.set(key, value, px=ttl_ms, get=True), "presence_beat")
        return None if previous is None else str(previous)

    async def presence_end(self, boot: str) -> None:
        await checked(self._read.delete(self._keys.present(boot)), "presence_end")


async def list_channels(client: Redis, keys: Keys, limit: int) -> list[ChannelInfo]:
    """Up to ``limit`` channels with a stream, by name (a SCAN of the key space: for operators)."""
    names: list[str] = []
    scan = client.scan_iter(match=keys.stream_pattern(), count=1000, _type="STREAM")
    try:
        async for key in scan:
            names.append(key)
            if len(names) >= _SCAN_CAP:
                break
    except UNAVAILABLE as exc:
        raise BrokerUnavailable(f"Redis did not answer SCAN: {exc}") from exc
    names = sorted(names)[:limit]
    pipe = client.pipeline(transaction=False)
    for key in names:
        pipe.xinfo_stream(key)
    infos = await checked(pipe.execute(raise_on_error=False), "channels")
    return [
        _channel_info(keys.channel_of_stream(key), info)
        for key, info in zip(names, infos, strict=True)
        if isinstance(info, dict)
    ]


async def close_client(client: Redis, within: float) -> None:
    """Close a client's connections, giving up after ``within`` seconds (Redis may be gone)."""
    with contextlib.suppress(*UNAVAILABLE):
        await asyncio.wait_for(client.aclose(), within)


class _LastIds:
    """The last entry ids of channels, for whoever asks at the same moment read in one pipeline,
    one at a time: a storm of subscriptions (a deployment restarted, every client following its
    channels again) asks for thousands at once, which one read each would queue for the read
    pool's few connections longer than a caller waits for one."""

    _BATCH: Final = 500

    def __init__(self, client: Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self._asked: dict[str, asyncio.Future[StreamId]] = {}
        self._task: asyncio.Task[None] | None = None

    def get(self, channel: str) -> asyncio.Future[StreamId]:
        future = self._asked.get(channel)
        if future is None:
            future = self._asked[channel] = asyncio.get_running_loop().create_future()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="relay-last-ids")
        return asyncio.shield(future)  # a caller that gives up cancels nobody else's answer

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for future in self._asked.values():
            if not future.done():
                future.set_exception(BrokerUnavailable("the broker is closing"))
                future.exception()  # retrieved: its caller may be gone
        self._asked.clear()

    async def _run(self) -> None:
        while self._asked:
            batch = dict(itertools.islice(self._asked.items(), self._BATCH))
            for channel in batch:
                del self._asked[channel]
            try:
                found = await self._read(list(batch))
            except BaseException as exc:  # BrokerError mostly: every caller of this batch hears it
                error = exc if isinstance(exc, Exception) else BrokerUnavailable("the broker is closing")
                for future in batch.values():
                    if not future.done():
                        future.set_exception(error)
                        future.exception()  # retrieved: its caller may have given up
                if error is not exc:
                    raise  # cancelled (closing)
                continue
            for (_, future), raw in zip(batch.items(), found, strict=True):
                if not future.done():
                    future.set_result(streamid.parse(str(raw[0][0])) if raw else streamid.ZERO)

    async def _read(self, channels: list[str]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for channel in channels:
            pipe.xrevrange(self._keys.stream(channel), count=1)
        found: list[Any] = await checked(pipe.execute(), "last_id")
        return found


async def _outcome(run: Awaitable[list[Any]]) -> list[Any] | BrokerUnavailable:
    try:
        return await run
    except BrokerUnavailable as exc:
        return exc


def _script_missing(requests: Sequence[PublishRequest], replies: list[Any]) -> list[int]:
    """The requests that found no script, and may run again: none of their channel's later
    requests in the batch was stored (running one again must not reorder its channel)."""
    retry: list[int] = []
    stored_after: set[str] = set()
    for i in reversed(range(len(requests))):
        channel = requests[i].channel
        if not isinstance(replies[i], redis_errors.NoScriptError):
            stored_after.add(channel)
        elif channel not in stored_after:
            retry.append(i)
    return retry[::-1]


def _published(reply: Any) -> Published | Exception:
    if isinstance(reply, BrokerUnavailable):
        return reply
    if isinstance(reply, redis_errors.NoScriptError):
        return BrokerUnavailable("the publish script was not loaded in Redis (SCRIPT FLUSH?); retry")
    if isinstance(reply, redis_errors.RedisError) and passing(reply):
        return BrokerUnavailable(f"Redis cannot store now: {reply}")
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
