"""What a consumer connection and a group member's connection share.

The handler writes (a first frame, then whatever the subclass has to send, with error answers
going first). The client's frames are taken by a reader task that exists only while there is
something to take, where the connection has a wire (:mod:`app.wire`): its inbox says when a frame
arrives, and an idle connection costs one task instead of two. Without a wire a reader task waits
on ``receive`` for the connection's whole life. Closing is asked for (drain, flood) with
``request_close``; a client that leaves just stops both.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from app import metrics, protocol
from app.logs import ConnectionLog, peer_of
from app.protocol import Close, ErrorCode
from app.routes.common import FLOOD_REASON, FloodGuard
from app.wakeup import Wakeup
from app.wire import Inbox, wire_of


class Connection:
    role = "consumer"

    def __init__(self, websocket: WebSocket, channel: str, *, expires: float | None = None) -> None:
        self.websocket = websocket
        self.channel = channel
        self._expires = expires
        self._client_code: int | None = None
        self._log: ConnectionLog | None = None
        self.wake = Wakeup()
        # made when first needed: most connections never need them, and thousands sit idle
        self._control: deque[str] | None = None
        self._flood: FloodGuard | None = None
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._close: tuple[int, str] | None = None
        self._inbox: Inbox | None = None
        self._reading: asyncio.Task[None] | None = None  # taking frames that arrived (with a wire)

    def request_close(self, code: int, reason: str) -> None:
        if not self._closing:
            self._close = (code, reason)
            self._stop()

    def answer(self, code: ErrorCode, detail: str, *, flood: bool = True) -> None:
        """Queue an error frame. ``flood``: it answers a bad frame of the client's, which counts."""
        if flood:
            if self._flood is None:
                self._flood = FloodGuard()
            if self._flood.flooding():
                self.request_close(Close.POLICY, FLOOD_REASON)
                return
        metrics.ERRORS.labels(code).inc()
        if self._log is not None:
            self._log.error(code, detail)
        if self._control is None:
            self._control = deque()
        self._control.append(protocol.error_frame(code, detail))
        self.wake.set()

    async def serve(self, first_frame: str) -> None:
        websocket = self.websocket
        await websocket.accept()
        metrics.CONNECTIONS.labels(self.role).inc()
        self._log = ConnectionLog(self.role, self.channel, peer_of(websocket.client))
        wire = wire_of(websocket)
        reader: asyncio.Task[None] | None = None
        if wire is None:
            reader = asyncio.create_task(self._read())
        else:
            self._inbox = wire.inbox
            self._inbox.listener = self._on_event
            if not self._inbox.empty():  # it arrived before the listener
                self._reading = asyncio.create_task(self._take_frames())
        expiry = expire_at(self._expires, self.request_close)
        try:
            await websocket.send_text(first_frame)
            await self.write()
            if self._close is not None:
                await websocket.close(*self._close)
        except WebSocketDisconnect:
            pass
        finally:
            for task in (reader, self._reading):
                if task is not None:
                    task.cancel()
            if self._inbox is not None:
                self._inbox.listener = None
            if expiry is not None:
                expiry.cancel()
            metrics.CONNECTIONS.labels(self.role).dec()
            self._log_close()

    def _log_close(self) -> None:
        if self._log is None:
            return
        if self._close is not None:
            self._log.closed(self._close[0], self._close[1], "relay")
        else:
            self._log.closed(self._client_code, "", "client")

    @property
    def closing(self) -> bool:
        return self._closing

    async def wait_closing(self) -> None:
        if not self._closing:
            if self._closed is None:
                self._closed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._closed)

    @property
    def has_answers(self) -> bool:
        return bool(self._control)

    async def send_answers(self) -> None:
        control = self._control
        while control:
            await self.websocket.send_text(control.popleft())

    async def write(self) -> None:
        """Send until closing; answers first (``send_answers``)."""
        raise NotImplementedError

    def on_frame(self, message: Any) -> None:
        """A frame from the client (an ASGI ``websocket.receive`` message)."""
        raise NotImplementedError

    def _stop(self) -> None:
        self._closing = True
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self.wake.set()

    def _on_event(self, message: Any) -> None:
        """The inbox's listener: called as each event arrives."""
        if message["type"] == "websocket.disconnect":
            self._client_code = message.get("code")
            self._stop()  # the client is gone: stop writing, send no close frame
        elif self._reading is None:
            self._reading = asyncio.get_running_loop().create_task(self._take_frames())

    async def _take_frames(self) -> None:
        """Act on the frames in the inbox, then end (uvicorn reads no more until it is empty)."""
        inbox = self._inbox
        assert inbox is not None
        try:
            for _ in range(inbox.qsize()):
                message = await self.websocket.receive()  # there already: returns at once
                if message["type"] == "websocket.disconnect":
                    self._on_event(message)
                    return
                self.on_frame(message)
        finally:
            self._reading = None

    async def _read(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                self._client_code = message.get("code")
                self._stop()  # the client is gone: stop writing, send no close frame
                return
            self.on_frame(message)


TOKEN_EXPIRED_REASON = "token expired: reconnect with a new token"


def expire_at(expires: float | None, close: Callable[[int, str], None]) -> asyncio.TimerHandle | None:
    """Close the connection with 4401 when its token's ``exp`` (a Unix time) passes."""
    if expires is None:
        return None
    loop = asyncio.get_running_loop()
    delay = max(0.0, expires - time.time())
    return loop.call_later(delay, close, Close.TOKEN_EXPIRED, TOKEN_EXPIRED_REASON)
