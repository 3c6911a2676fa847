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
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from app import metrics, protocol
from app.errors import BrokerUnavailable, StorageError
from app.protocol import Close, ErrorCode
from app.publisher import Receipt
from app.routes.common import DRAINING_DETAIL, admit, relay_of
from app.wakeup import Wakeup

router = APIRouter()
log = logging.getLogger("relay.producer")

Reply = str | asyncio.Future[Receipt]
Submit = Callable[[str, str], asyncio.Future[Receipt]]


@router.websocket("/ws/producer/{channel}")
async def producer(websocket: WebSocket, channel: str) -> None:
    await _serve(websocket, channel)


@router.websocket("/ws/producer")
async def default_producer(websocket: WebSocket) -> None:
    await _serve(websocket, protocol.DEFAULT_CHANNEL)


async def _serve(websocket: WebSocket, channel: str) -> None:
    if await admit(websocket, channel) is None:
        return
    relay = relay_of(websocket)
    connection = ProducerConnection(websocket, channel, relay.settings.max_message_bytes)
    with relay.connection(connection):
        await connection.run(relay.publisher.submit, relay.settings.producer_window)


def utf8_length_exceeds(text: str, limit: int) -> bool:
    """Whether ``text`` is longer than ``limit`` bytes in UTF-8, encoding only when it matters."""
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode()) > limit


class ProducerConnection:
    def __init__(self, websocket: WebSocket, channel: str, max_bytes: int) -> None:
        self.websocket = websocket
        self.channel = channel
        self._max_bytes = max_bytes
        self._replies: deque[Reply] = deque()
        self._queued = Wakeup()  # a reply was queued
        self._room = Wakeup()  # a reply was sent
        self._close: tuple[int, str] | None = None

    def request_close(self, code: int, reason: str) -> None:
        """Answer every frame read so far, then close."""
        if self._close is None:
            self._close = (code, reason)
            self._queued.set()
            self._room.set()

    async def run(self, submit: Submit, window: int) -> None:
        await self.websocket.accept()
        metrics.CONNECTIONS.labels("producer").inc()
        replier = asyncio.create_task(self._reply())
        try:
            await self._read(submit, window)
            if self._close is not None:
                self._queued.set()
                await replier  # it sends the close once every reply is out
        except WebSocketDisconnect:
            pass
        finally:
            replier.cancel()
            metrics.CONNECTIONS.labels("producer").dec()

    async def _read(self, submit: Submit, window: int) -> None:
        replies = self._replies
        while self._close is None:
            if len(replies) >= window:
                await self._room.wait()
                continue
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if self._close is not None:
                replies.append(protocol.error_frame(ErrorCode.UNAVAILABLE, DRAINING_DETAIL))
            elif text is None:
                replies.append(
                    _error(ErrorCode.BINARY_FRAME, "expected a text frame holding JSON, got binary")
                )
            elif utf8_length_exceeds(text, self._max_bytes):
                self.request_close(Close.TOO_BIG, f"frame over RELAY_MAX_MESSAGE_BYTES ({self._max_bytes})")
            else:
                replies.append(self._publish(submit, text))
            self._queued.set()

    def _publish(self, submit: Submit, text: str) -> Reply:
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return _error(ErrorCode.INVALID_JSON, f"expected one JSON value: {exc}")
        return submit(self.channel, text)

    async def _reply(self) -> None:
        replies = self._replies
        websocket = self.websocket
        while True:
            while replies:
                frame = await _settle(replies[0])
                replies.popleft()
                self._room.set()
                await websocket.send_text(frame)
            if self._close is not None:
                await websocket.close(*self._close)
                return
            await self._queued.wait()


async def _settle(reply: Reply) -> str:
    if isinstance(reply, str):
        return reply
    try:
        entry_id, _ = await reply
    except BrokerUnavailable as exc:
        return _error(ErrorCode.UNAVAILABLE, f"not stored: {exc}")
    except StorageError as exc:
        return _error(ErrorCode.STORAGE_ERROR, f"not stored: {exc}")
    return protocol.ack_frame(entry_id)


def _error(code: ErrorCode, detail: str) -> str:
    metrics.ERRORS.labels(code).inc()
    return protocol.error_frame(code, detail)
