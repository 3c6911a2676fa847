"""``WS /ws/producer/{channel}``: producers.

Every text frame is one JSON message and gets exactly one reply, in frame order: an ``ack`` once
Redis has the entry, or an ``error``. The handler reads frames and queues one pending reply per
frame; a second task sends the replies in order as their publishes complete. A producer may keep
up to ``RELAY_PRODUCER_WINDOW`` frames unanswered; beyond that the relay stops reading its socket
(TCP backpressure) instead of buffering.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import orjson
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from app import metrics, protocol
from app.errors import BrokerUnavailable, StorageError
from app.logs import ConnectionLog, peer_of
from app.protocol import Close, ErrorCode
from app.publisher import Publisher, Receipt
from app.routes.common import DRAINING_DETAIL, RateLimit, admit, relay_of
from app.routes.connection import expire_at
from app.wakeup import Wakeup
from app.wire import text_frame, wire_of

log = logging.getLogger("relay.producer")

Reply = str | asyncio.Future[Receipt]
_REPLY_BATCH = 256


def _ready(reply: Reply) -> bool:
    return isinstance(reply, str) or reply.done()


Submit = Callable[[str, str], asyncio.Future[Receipt]]


async def serve(websocket: WebSocket, channel: str) -> None:
    """``WS /ws/producer/{channel}`` (dispatched by :mod:`app.routes.sockets`)."""
    admission = await admit(websocket, channel, publish=True)
    if admission is None:
        return
    relay = relay_of(websocket)
    settings = relay.settings
    limit = RateLimit(settings.publish_rate, settings.publish_burst) if settings.publish_rate else None
    idle = settings.producer_idle_timeout or None
    connection = ProducerConnection(websocket, channel, settings.max_message_bytes, limit, idle)
    with relay.connection(connection):
        await connection.run(relay.publisher, settings.producer_window, admission.grant.expires)


def utf8_length_exceeds(text: str, limit: int) -> bool:
    """Whether ``text`` is longer than ``limit`` bytes in UTF-8, encoding only when it matters."""
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode()) > limit


class ProducerConnection:
    def __init__(
        self,
        websocket: WebSocket,
        channel: str,
        max_bytes: int,
        limit: RateLimit | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.websocket = websocket
        self.channel = channel
        self._max_bytes = max_bytes
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._last_frame = 0.0
        self._idle_handle: asyncio.TimerHandle | None = None
        self._replies: deque[Reply] = deque()
        self._queued = Wakeup()  # a reply was queued
        self._room = Wakeup()  # a reply was sent
        self._close: tuple[int, str] | None = None
        self._client_code: int | None = None
        self._log: ConnectionLog | None = None

    def request_close(self, code: int, reason: str) -> None:
        """Answer every frame read so far, then close."""
        if self._close is None:
            self._close = (code, reason)
            self._queued.set()
            self._room.set()

    async def run(self, publisher: Publisher, window: int, expires: float | None = None) -> None:
        await self.websocket.accept()
        metrics.CONNECTIONS.labels("producer").inc()
        self._log = ConnectionLog("producer", self.channel, peer_of(self.websocket.client))
        replier = asyncio.create_task(self._reply())
        expiry = expire_at(expires, self.request_close)
        self._last_frame = asyncio.get_running_loop().time()
        idle = self._watch_idle()
        try:
            await self._read(publisher, window)
            if self._close is not None:
                self._queued.set()
                await replier  # it sends the close once every reply is out
        except WebSocketDisconnect:
            pass
        finally:
            replier.cancel()
            for timer in (expiry, idle, self._idle_handle):
                if timer is not None:
                    timer.cancel()
            metrics.CONNECTIONS.labels("producer").dec()
            if self._close is not None:
                self._log.closed(self._close[0], self._close[1], "relay")
            else:
                self._log.closed(self._client_code, "", "client")

    def _watch_idle(self) -> asyncio.TimerHandle | None:
        """Close a producer that sent nothing for the idle timeout (a timer, not a per-frame cost)."""
        timeout = self._idle_timeout
        if timeout is None:
            return None
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._last_frame
        if quiet >= timeout:
            metrics.IDLE_CLOSES.inc()
            self.request_close(Close.NORMAL, f"idle for {timeout:g}s (RELAY_PRODUCER_IDLE_TIMEOUT)")
            return None
        self._idle_handle = loop.call_later(timeout - quiet, self._watch_idle)
        return self._idle_handle

    async def _read(self, publisher: Publisher, window: int) -> None:
        replies = self._replies
        submit = publisher.submit
        loop = asyncio.get_running_loop()
        while self._close is None:
            if len(replies) >= window:
                await self._room.wait()
                continue
            if publisher.full:
                await publisher.wait_for_room()  # all producers together wait for Redis: stop reading
                continue
            message = await self.websocket.receive()
            self._last_frame = loop.time()
            if message["type"] == "websocket.disconnect":
                self._client_code = message.get("code")
                return
            text = message.get("text")
            if self._close is not None:
                replies.append(protocol.error_frame(ErrorCode.UNAVAILABLE, DRAINING_DETAIL))
            elif text is None:
                replies.append(
                    self._error(ErrorCode.BINARY_FRAME, "expected a text frame holding JSON, got binary")
                )
            elif utf8_length_exceeds(text, self._max_bytes):
                metrics.ERRORS.labels(ErrorCode.TOO_LARGE).inc()
                self.request_close(Close.TOO_BIG, f"frame over RELAY_MAX_MESSAGE_BYTES ({self._max_bytes})")
            elif self._limit is not None and not self._limit.take():
                metrics.RATE_LIMITED.inc()
                replies.append(
                    self._error(ErrorCode.RATE_LIMITED, "over RELAY_PUBLISH_RATE: not stored; slow down")
                )
                self._queued.set()
                await asyncio.sleep(self._limit.delay())  # read no faster than allowed: backpressure
                continue
            else:
                replies.append(self._publish(submit, text))
            self._queued.set()

    def _publish(self, submit: Submit, text: str) -> Reply:
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return self._error(ErrorCode.INVALID_JSON, f"expected one JSON value: {exc}")
        return submit(self.channel, text)

    async def _reply(self) -> None:
        replies = self._replies
        websocket = self.websocket
        wire = wire_of(websocket)
        while True:
            while replies:
                frames = [await self._settle(replies[0])]
                replies.popleft()
                # a batch stored in Redis settles many replies at once: send them together, in
                # one write where the connection has a wire (a system call per ack was a quarter
                # of the instance's CPU in S3)
                while replies and len(frames) < _REPLY_BATCH and _ready(replies[0]):
                    frames.append(await self._settle(replies.popleft()))
                self._room.set()
                if wire is not None:
                    await wire.send(b"".join([text_frame(frame.encode()) for frame in frames]))
                else:
                    for frame in frames:
                        await websocket.send_text(frame)
            if self._close is not None:
                await websocket.close(*self._close)
                return
            await self._queued.wait()

    async def _settle(self, reply: Reply) -> str:
        if isinstance(reply, str):
            return reply
        try:
            entry_id, _ = await reply
        except BrokerUnavailable as exc:
            return self._error(ErrorCode.UNAVAILABLE, f"not stored: {exc}")
        except StorageError as exc:
            return self._error(ErrorCode.STORAGE_ERROR, f"not stored: {exc}")
        return protocol.ack_frame(entry_id)

    def _error(self, code: ErrorCode, detail: str) -> str:
        metrics.ERRORS.labels(code).inc()
        if self._log is not None:
            self._log.error(code, detail)
        return protocol.error_frame(code, detail)
