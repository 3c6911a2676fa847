"""The runner: consumes a channel through a consumer group and calls your async function per message.

    relay worker run workers.example:show --channel orders --group billing --concurrency 8

- ``handler(message)`` returns: the message is acknowledged;
- it raises (or the process dies): the message is delivered again after
  ``RELAY_GROUP_CLAIM_IDLE_MS``, to this runner or another one, with ``message.delivery`` one higher;
- after ``RELAY_GROUP_MAX_DELIVERIES`` deliveries it goes to ``relay:{C}:dead`` instead;
- SIGTERM/SIGINT: no new messages are taken; the ones in flight finish (for up to ``--grace``
  seconds, 30 by default, after which they are left to be delivered again) and are acked.

The runner is a group member like a WebSocket one (``app.groups``): ``concurrency`` is its prefetch.
It runs a broker, a hub and a group manager of its own, and no server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from app.backoff import Backoff
from app.broker.interface import Delivery
from app.broker.streams import RedisBroker
from app.errors import BrokerError, ConfigError
from app.fanout.hub import Hub
from app.groups.manager import GroupManager
from app.groups.member import Membership
from app.protocol.names import LATEST, Position
from app.settings import Settings

log = logging.getLogger("relay.runner")


@dataclass(frozen=True, slots=True)
class Message:
    """What a handler receives."""

    id: str
    channel: str
    data: Any  # the producer's JSON, parsed
    delivery: int  # 1 the first time


Handler = Callable[[Message], Awaitable[object]]


def load_handler(target: str) -> Handler:
    """``module:function`` → the async function, or ConfigError saying what is wrong."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"expected MODULE:FUNCTION, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    handler = getattr(module, attribute, None)
    if not inspect.iscoroutinefunction(handler):
        raise ConfigError(f"{target!r} is not an async function")
    return handler


class HandlerPool:
    """A group member whose deliveries are handled by tasks, ``concurrency`` at a time."""

    def __init__(self, handler: Handler, channel: str, concurrency: int) -> None:
        self._handler = handler
        self._channel = channel
        self._concurrency = concurrency
        self._accepting = True
        self._tasks: set[asyncio.Task[None]] = set()
        self.membership: Membership | None = None

    @property
    def prefetch(self) -> int:
        return self._concurrency if self._accepting else 0

    def ack_failed(self, ids: list[str], error: BrokerError) -> None:
        log.warning("acks of %d message(s) not recorded (%s); they will be delivered again", len(ids), error)

    def deliver(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            task = asyncio.create_task(self._handle(delivery), name=f"relay-handle-{delivery.entry_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def finish(self, grace: float) -> None:
        """Take nothing new; wait for what is in flight (cancelled after ``grace`` seconds)."""
        self._accepting = False
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def _handle(self, delivery: Delivery) -> None:
        membership = self.membership
        assert membership is not None
        try:
            message = Message(delivery.entry_id, self._channel, orjson.loads(delivery.data), delivery.count)
            await self._handler(message)
        except Exception:
            log.exception(
                "handling %s (delivery %d) failed; it comes back later", delivery.entry_id, delivery.count
            )
            membership.reader.release(membership, [delivery.entry_id])
            return
        except asyncio.CancelledError:
            membership.reader.release(membership, [delivery.entry_id])
            raise
        membership.reader.ack(membership, [delivery.entry_id])


async def run(
    settings: Settings,
    handler: Handler,
    channel: str,
    group: str,
    *,
    concurrency: int,
    position: Position = LATEST,
    grace: float = 30.0,
) -> None:
    if settings.embedded:
        raise ConfigError("set RELAY_REDIS_URL: the embedded Redis lives in one process only")
    broker = RedisBroker(settings)
    hub = Hub(broker, buffer=1)
    groups = GroupManager(broker, hub, settings)
    pool = HandlerPool(handler, channel, concurrency)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start(hub)
    groups.start()
    try:
        pool.membership = await _join(broker, groups, (channel, group), pool, position, stop)
        if pool.membership is not None:
            log.info(
                "runner %s: channel %r group %r, %d at a time",
                settings.instance_name,
                channel,
                group,
                concurrency,
            )
            await stop.wait()
            log.info("stopping: finishing %d message(s) in flight", pool.in_flight)
            await pool.finish(grace)
            await groups.flush(pool.membership)  # the last acks reach Redis before we go
            groups.leave(pool.membership)
    finally:
        await groups.close()
        hub.close()
        await broker.close()


async def _join(
    broker: RedisBroker,
    groups: GroupManager,
    where: tuple[str, str],
    pool: HandlerPool,
    position: Position,
    stop: asyncio.Event,
) -> Membership | None:
    """Join, retrying while Redis is unreachable (a worker started before Redis waits for it)."""
    channel, group = where
    backoff = Backoff()
    while not stop.is_set():
        try:
            await broker.ping()  # connected, Pub/Sub included
            return await groups.join(channel, group, pool, position)
        except BrokerError as exc:
            log.info("waiting to join group %r of %r (%s)", group, channel, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff.failed())
    return None
