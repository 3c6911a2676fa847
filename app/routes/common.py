"""What every endpoint shares: the instance's parts, error bodies, handshake refusals."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import cast

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket

from app import logs, metrics, protocol
from app.auth import AuthError, Grant
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
    logs.connections.info(
        "%s %s: refused %d %s: %s",
        logs.peer_of(websocket.client),
        websocket.url.path,
        status,
        code,
        detail,
        extra={"event": "refused", "path": websocket.url.path, "status": status, "code": str(code)},
    )
    headers = {"Retry-After": "1"} if status == 503 else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    await websocket.send_denial_response(error_response(status, code, detail, headers))


@dataclass(frozen=True, slots=True)
class Admission:
    position: Position
    grant: Grant


async def admit(
    websocket: WebSocket, channel: str, from_: str | None = None, *, publish: bool = False
) -> Admission | None:
    """Check a WebSocket handshake before any upgrade: the request, the origin, the token, room on
    the instance. Refuses it (an HTTP answer, so no message ever flows) and returns None when any
    check fails; else the position asked for (``$`` when none) and what the token allows."""
    relay = relay_of(websocket)
    try:
        protocol.check_channel(channel)
        position = protocol.parse_position(from_)
        grant = authorize(websocket, relay, channel, publish=publish)
    except ProtocolError as exc:
        await refuse(websocket, 400, ErrorCode(exc.code), exc.detail)
        return None
    except AuthError as exc:
        await refuse(websocket, exc.status, _AUTH_CODES[exc.status], exc.detail)
        return None
    origin = websocket.headers.get("origin")
    allowed = relay.settings.allowed_origins
    if allowed and origin is not None and origin.rstrip("/").lower() not in allowed:
        await refuse(websocket, 403, ErrorCode.FORBIDDEN, f"origin {origin[:100]!r} is not allowed")
        return None
    if relay.draining:
        await refuse(websocket, 503, ErrorCode.UNAVAILABLE, DRAINING_DETAIL)
        return None
    if relay.open_connections >= relay.settings.max_connections:
        metrics.REFUSED_FULL.inc()
        await refuse(websocket, 503, ErrorCode.UNAVAILABLE, "this instance is full; connect to another one")
        return None
    return Admission(position, grant)


def authorize(connection: HTTPConnection, relay: Relay, channel: str, *, publish: bool) -> Grant:
    """The request's grant if it covers ``channel`` for publishing (or subscribing); else AuthError."""
    grant = relay.auth.grant(connection)
    allowed = grant.may_publish(channel) if publish else grant.may_subscribe(channel)
    if not allowed:
        verb = "publish to" if publish else "subscribe to"
        raise AuthError(403, f"the token does not allow to {verb} channel {channel!r}")
    return grant


_AUTH_CODES = {401: ErrorCode.UNAUTHORIZED, 403: ErrorCode.FORBIDDEN}


def auth_response(exc: AuthError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return error_response(exc.status, _AUTH_CODES[exc.status], exc.detail, headers)


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


class RateLimit:
    """A token bucket: ``rate`` per second on average, ``burst`` at once."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()

    def take(self) -> bool:
        """One message may go now (and is counted), or not."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def delay(self) -> float:
        """Seconds until the next message may go."""
        return max(0.0, (1 - self._tokens) / self._rate)
