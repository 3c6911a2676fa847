"""What a consumer connection and a group member's connection share.

Each has two tasks: the handler writes (a first frame, then whatever the subclass has to send,
with error answers going first), and a reader takes the client's frames. Closing is asked for
(drain, flood) with ``request_close``; a client that leaves just stops both.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from app import metrics, protocol
from app.protocol import Close, ErrorCode
from app.routes.common import FLOOD_REASON, FloodGuard
from app.wakeup import Wakeup


class Connection:
    role = "consumer"

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

    def answer(self, code: ErrorCode, detail: str, *, flood: bool = True) -> None:
        """Queue an error frame. ``flood``: it answers a bad frame of the client's, which counts."""
        if flood and self._flood.flooding():
            self.request_close(Close.POLICY, FLOOD_REASON)
            return
        metrics.ERRORS.labels(code).inc()
        self._control.append(protocol.error_frame(code, detail))
        self.wake.set()

    async def serve(self, first_frame: str) -> None:
        websocket = self.websocket
        await websocket.accept()
        metrics.CONNECTIONS.labels(self.role).inc()
        reader = asyncio.create_task(self._read())
        try:
            await websocket.send_text(first_frame)
            await self.write()
            if self._close is not None:
                await websocket.close(*self._close)
        except WebSocketDisconnect:
            pass
        finally:
            reader.cancel()
            metrics.CONNECTIONS.labels(self.role).dec()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    async def wait_closing(self) -> None:
        await self._closing.wait()

    async def send_answers(self) -> None:
        while self._control:
            await self.websocket.send_text(self._control.popleft())

    async def write(self) -> None:
        """Send until closing; answers first (``send_answers``)."""
        raise NotImplementedError

    def on_frame(self, message: Any) -> None:
        """A frame from the client (an ASGI ``websocket.receive`` message)."""
        raise NotImplementedError

    def _stop(self) -> None:
        self._closing.set()
        self.wake.set()

    async def _read(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                self._stop()  # the client is gone: stop writing, send no close frame
                return
            self.on_frame(message)
