"""What every endpoint shares: the instance's parts, error bodies, handshake refusals."""

from __future__ import annotations

from typing import cast

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket

from app import metrics
from app.lifecycle import Relay
from app.protocol import ErrorCode, error_body


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


DRAINING_DETAIL = "this instance is draining; connect to another one"
