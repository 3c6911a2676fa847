"""What every endpoint shares: the instance's parts, error bodies, handshake refusals."""

from __future__ import annotations

import time
from collections import deque
from typing import cast

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket

from app import metrics, protocol
from app.errors import ProtocolError
from app.lifecycle import Relay
from app.protocol import ErrorCode, Position, error_body


def relay_of(connection: HTTPConnection) -> Relay:
    return cast(Relay, connection.app.state.relay)


def error_response(
    status: int, code: ErrorCode, detail: str, headers: dict[str, str] | None = None
) -> Response:
    metrics.ERRORS.labels(code).inc()
    return Response(
        error_body(code, detail), status_code=status, media_type="application/json", headers=headers
    )


async def refuse(websocket: WebSocket, status: int, code: ErrorCode, detail: str) -> None:
    """Answer a WebSocket handshake with an HTTP error instead of upgrading."""
    headers = {"Retry-After": "1"} if status == 503 else None
    await websocket.send_denial_response(error_response(status, code, detail, headers))


async def admit(websocket: WebSocket, channel: str, from_: str | None = None) -> Position | None:
    """Check a WebSocket handshake before any upgrade; refuse it and return None when it fails.

    Returns the position asked for (``$`` when there is none).
    """
    try:
        protocol.check_channel(channel)
        position = protocol.parse_position(from_)
    except ProtocolError as exc:
        await refuse(websocket, 400, ErrorCode(exc.code), exc.detail)
        return None
    if relay_of(websocket).draining:
        await refuse(websocket, 503, ErrorCode.UNAVAILABLE, DRAINING_DETAIL)
        return None
    return position


DRAINING_DETAIL = "this instance is draining; connect to another one"


class FloodGuard:
    """Counts a client's bad frames: more than ``limit`` within ``seconds`` is a flood."""

    __slots__ = ("_seconds", "_times")

    def __init__(self, limit: int = 32, seconds: float = 10.0) -> None:
        self._times: deque[float] = deque(maxlen=limit)
        self._seconds = seconds

    def flooding(self) -> bool:
        """Record one bad frame; True when this one is over the limit."""
        now = time.monotonic()
        full = len(self._times) == self._times.maxlen
        if full and now - self._times[0] < self._seconds:
            return True
        self._times.append(now)
        return False


FLOOD_REASON = "too many frames that could not be accepted; fix the client"
