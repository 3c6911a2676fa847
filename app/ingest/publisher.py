"""Coalesces the publishes of every producer on the instance into pipelined batches.

Frames that arrive while a batch is in flight wait for the next one, so under load each Redis
round trip carries many messages (one script call per channel); idle, a message goes out at once.
One batch is in flight at a time: that keeps every channel's messages in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Final

from app import metrics
from app.broker.interface import Publishing, PublishRequest
from app.errors import BrokerError, BrokerUnavailable, StorageError
from app.wakeup import Wakeup

log = logging.getLogger("relay.publisher")

Receipt = tuple[str, bool]
"""``(entry id, replayed)``: replayed when an idempotency key named an earlier entry."""

_MAX_BATCH: Final = 2048  # messages per round trip
MAX_QUEUED_BYTES: Final = 64 * 1024 * 1024  # waiting for Redis, all producers together
_MAX_REQUEST_BYTES: Final = 512 * 1024  # per script call: keeps each announcement well under Redis's limits
_MAX_REQUEST_MESSAGES: Final = 512


@dataclass(slots=True)
class _Item:
    """One message waiting for Redis, the future its producer waits on, and, once grouped into a
    batch's requests, where its result is: ``results[request].ids[offset]``."""

    channel: str
    data: str
    key: str | None
    future: asyncio.Future[Receipt]
    request: int = 0
    offset: int = 0


class Publisher:
    def __init__(self, broker: Publishing) -> None:
        self._broker = broker
        self._queue: deque[_Item] = deque()
        self._ready = Wakeup()  # something was queued
        self._loop: asyncio.AbstractEventLoop | None = None  # a system call less per message (app.wakeup)
        self._task: asyncio.Task[None] | None = None
        self._in_flight: list[_Item] = []
        self._bytes = 0  # of messages queued or in flight
        self._room = asyncio.Event()
        self._room.set()

    @property
    def full(self) -> bool:
        """Too much waits for Redis: producers should stop reading, HTTP publishes get 503."""
        return not self._room.is_set()

    async def wait_for_room(self) -> None:
        await self._room.wait()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="relay-publisher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail(self._in_flight + list(self._queue), BrokerUnavailable("the instance is stopping"))
        self._queue.clear()

    def submit(self, channel: str, data: str, idempotency_key: str | None = None) -> asyncio.Future[Receipt]:
        """Queue one message; the future resolves once Redis has it (or fails: not stored)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Receipt] = loop.create_future()
        self._queue.append(_Item(channel, data, idempotency_key, future))
        self._bytes += len(data)
        if self._bytes > MAX_QUEUED_BYTES:
            self._room.clear()
        self._ready.set()
        return future

    async def _run(self) -> None:
        while True:
            while not self._queue:  # a wake-up set while the last batch was out may find it taken
                await self._ready.wait()
            batch = self._in_flight = [
                self._queue.popleft() for _ in range(min(_MAX_BATCH, len(self._queue)))
            ]
            try:
                await self._flush(batch)
            except Exception as exc:  # keep publishing whatever one batch did
                log.exception("publishing a batch failed")
                self._fail(batch, BrokerUnavailable(f"publish failed: {exc}"))
            self._in_flight = []
            self._bytes -= sum(len(item.data) for item in batch)
            if self._bytes <= MAX_QUEUED_BYTES // 2:
                self._room.set()

    async def _flush(self, batch: list[_Item]) -> None:
        requests = _group(batch)
        try:
            results = await self._broker.publish(requests)
        except BrokerError as exc:
            self._fail(batch, exc)
            return
        stored = 0
        for item in batch:
            result = results[item.request]
            future = item.future
            if future.done():
                continue
            if isinstance(result, Exception):
                error = result if isinstance(result, BrokerError) else StorageError(str(result))
                future.set_exception(error)
            elif result.replayed:
                future.set_result((result.ids[0], True))
            else:
                future.set_result((result.ids[item.offset], False))
                stored += 1
        metrics.PUBLISHED.inc(stored)

    @staticmethod
    def _fail(items: list[_Item], error: Exception) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)
                item.future.exception()  # a producer that went away no longer reads it


def _group(batch: list[_Item]) -> list[PublishRequest]:
    """One request per channel run; an idempotent message gets a request of its own. Each item
    is told where its result will be."""
    requests: list[PublishRequest] = []
    sizes: list[int] = []
    open_request: dict[str, int] = {}
    for item in batch:
        channel, data = item.channel, item.data
        if item.key is not None:
            open_request.pop(channel, None)
            requests.append(PublishRequest(channel, [data], item.key))
            sizes.append(len(data))
            item.request, item.offset = len(requests) - 1, 0
            continue
        index = open_request.get(channel)
        if (
            index is None
            or sizes[index] + len(data) > _MAX_REQUEST_BYTES
            or len(requests[index].data) >= _MAX_REQUEST_MESSAGES
        ):
            requests.append(PublishRequest(channel, []))
            sizes.append(0)
            index = open_request[channel] = len(requests) - 1
        request = requests[index]
        item.request, item.offset = index, len(request.data)
        request.data.append(data)
        sizes[index] += len(data)
    return requests
