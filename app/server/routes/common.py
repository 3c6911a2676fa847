"""What every endpoint shares: the instance's parts, error bodies, handshake checks and refusals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, cast

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket

from app import logs, metrics
from app.errors import ProtocolError
from app.protocol import names
from app.protocol.codes import ErrorCode
from app.protocol.frames import error_body
from app.protocol.names import Position
from app.server.auth import AuthError, Grant
from app.server.lifecycle import Relay

DRAINING_DETAIL: Final = "this instance is draining; connect to another one"
_AUTH_CODES: Final = {401: ErrorCode.UNAUTHORIZED, 403: ErrorCode.FORBIDDEN}


def relay_of(connection: HTTPConnection) -> Relay:
    return cast(Relay, connection.app.state.relay)


def error_response(
    status: int, code: ErrorCode, detail: str, headers: dict[str, str] | None = None
) -> Response:
    metrics.ERRORS.labels(code).inc()
    return Response(
        error_body(code, detail), status_code=status, media_type="application/json", headers=headers
    )


async def auth_denial(websocket: WebSocket, exc: AuthError) -> None:
    """Refuse a WebSocket handshake whose token is missing, bad or too narrow (401 or 403)."""
    await deny(websocket, exc.status, _AUTH_CODES[exc.status], exc.detail)


def auth_response(exc: AuthError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return error_response(exc.status, _AUTH_CODES[exc.status], exc.detail, headers)


async def deny(websocket: WebSocket, status: int, code: ErrorCode, detail: str) -> None:
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
        names.check_channel(channel)
        position = names.parse_position(from_)
        grant = authorize(websocket, relay, channel, publish=publish)
    except ProtocolError as exc:
        await deny(websocket, 400, exc.code, exc.detail)
        return None
    except AuthError as exc:
        await deny(websocket, exc.status, _AUTH_CODES[exc.status], exc.detail)
        return None
    return Admission(position, grant) if await room_for(websocket, relay) else None


async def room_for(websocket: WebSocket, relay: Relay) -> bool:
    """The checks every handshake passes whatever it asks for: the origin, and room on the
    instance (not draining, not full). Refuses it and returns False when one fails."""
    origin = websocket.headers.get("origin")
    if not origin_allowed(relay, origin):
        assert origin is not None
        await deny(websocket, 403, ErrorCode.FORBIDDEN, f"origin {origin[:100]!r} is not allowed")
        return False
    if relay.draining:
        await deny(websocket, 503, ErrorCode.UNAVAILABLE, DRAINING_DETAIL)
        return False
    if relay.open_connections >= relay.settings.max_connections:
        metrics.REFUSED_FULL.inc()
        await deny(websocket, 503, ErrorCode.UNAVAILABLE, "this instance is full; connect to another one")
        return False
    return True


def origin_allowed(relay: Relay, origin: str | None) -> bool:
    """Whether a request from ``origin`` (its ``Origin`` header) may open a socket or a stream."""
    allowed = relay.settings.allowed_origins
    return not allowed or origin is None or origin.rstrip("/").lower() in allowed


def authorize(connection: HTTPConnection, relay: Relay, channel: str, *, publish: bool) -> Grant:
    """The request's grant if it covers ``channel`` for publishing (or subscribing); else AuthError."""
    grant = relay.auth.grant(connection)
    allowed = grant.may_publish(channel) if publish else grant.may_subscribe(channel)
    if not allowed:
        verb = "publish to" if publish else "subscribe to"
        raise AuthError(403, f"the token does not allow to {verb} channel {channel!r}")
    return grant
