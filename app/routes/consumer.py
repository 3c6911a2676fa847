"""``WS /ws/consumer/{channel}``: fan-out consumers.

Each connection has two tasks: the handler, which writes (the subscription's frames, in order),
and a reader that notices the client leaving. The fan-out never waits for either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from fastapi import APIRouter, Query, WebSocket
from redis.backoff import ExponentialWithJitterBackoff
from starlette.websockets import WebSocketDisconnect

from app import metrics, protocol, streamid
from app.errors import BrokerError
from app.protocol import Close, ErrorCode
from app.routes.common import FLOOD_REASON, FloodGuard, admit, refuse, relay_of
from app.routes.members import serve_member
from app.subscription import Subscription
from app.wakeup import Wakeup

router = APIRouter()
log = logging.getLogger("relay.consumer")


@router.websocket("/ws/consumer/{channel}")
async def consumer(websocket: WebSocket, channel: str, from_: str | None = Query(None, alias="from")) -> None:
    await _serve(websocket, channel, from_)


@router.websocket("/ws/consumer")
async def default_consumer(websocket: WebSocket, from_: str | None = Query(None, alias="from")) -> None:
    await _serve(websocket, protocol.DEFAULT_CHANNEL, from_)


async def _serve(websocket: WebSocket, channel: str, from_: str | None) -> None:
    position = await admit(websocket, channel, from_)
    if position is None:
        return
    relay = relay_of(websocket)
    if "group" in websocket.query_params:
        await serve_member(websocket, relay, channel, position)
        return
    connection = ConsumerConnection(websocket)
    try:
        sub = await relay.hub.subscribe(channel, position, connection.wake.set)
    except BrokerError as exc:
        await refuse(websocket, 503, ErrorCode.UNAVAILABLE, f"cannot follow the channel now: {exc}")
        return
    try:
        with relay.connection(connection):
            await connection.run(sub, position)
    finally:
        relay.hub.unsubscribe(sub)


class ConsumerConnection:
    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.wake = Wakeup()
        self._control: deque[str] = deque()
        self._flood = FloodGuard()
        self._closing = asyncio.Event()
        self._close: tuple[int, str] | None = None

    def request_close(self, code: int, reason: str) -> None:
        if not self._closing.is_set():
            self._close = (code, reason)
            self._stop()

    def _stop(self) -> None:
        self._closing.set()
        self.wake.set()

    async def run(self, sub: Subscription, position: protocol.Position) -> None:
        websocket = self.websocket
        await websocket.accept()
        metrics.CONNECTIONS.labels("consumer").inc()
        reader = asyncio.create_task(self._read())
        try:
            subscribed_id = streamid.format_id(sub.last) if position.latest else position.text
            await websocket.send_text(protocol.subscribed_frame(sub.channel, subscribed_id))
            await self._write(sub)
            if self._close is not None:
                await websocket.close(*self._close)
        except WebSocketDisconnect:
            pass
        finally:
            reader.cancel()
            metrics.CONNECTIONS.labels("consumer").dec()

    async def _write(self, sub: Subscription) -> None:
        websocket = self.websocket
        backoff = ExponentialWithJitterBackoff(base=0.1, cap=5.0)
        failures = 0
        while not self._closing.is_set():
            while self._control:
                await websocket.send_text(self._control.popleft())
            try:
                batch = await sub.take()
            except BrokerError as exc:  # Redis is away: stay connected, try again
                failures += 1
                log.warning("catch-up read on %r failed (%s); retrying", sub.channel, exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.compute(failures)):
                        await self._closing.wait()  # a close request cuts the pause short
                continue
            failures = 0
            if not batch:
                await self.wake.wait()
                continue
            for message in batch:
                await websocket.send(message)
            metrics.DELIVERED.inc(len(batch))

    async def _read(self) -> None:
        """Consumers have nothing to say in fan-out mode: answer each frame, stop a flood."""
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                self._stop()  # the client is gone: stop writing, send no close frame
                return
            if self._flood.flooding():
                self.request_close(Close.POLICY, FLOOD_REASON)
                return
            metrics.ERRORS.labels(ErrorCode.UNEXPECTED_FRAME).inc()
            self._control.append(
                protocol.error_frame(ErrorCode.UNEXPECTED_FRAME, "consumers send no frames in fan-out mode")
            )
            self.wake.set()
