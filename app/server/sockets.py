"""The WebSocket endpoints, dispatched by path before FastAPI's routing.

``/ws``, ``/ws/consumer[/{channel}]`` and ``/ws/producer[/{channel}]`` take no FastAPI parameters, bodies or
dependencies, yet every connection would keep FastAPI's and Starlette's middleware, routing and
dependency frames (and their exit stacks) alive for as long as it stays open: about half of an idle
consumer's memory (``docs/performance.md``). :class:`app.server.app.RelayApp` hands the handshakes that
:func:`match` recognises straight to their handler; anything else goes through FastAPI as usual.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from starlette.types import Scope
from starlette.websockets import WebSocket

from app.protocol.names import DEFAULT_CHANNEL
from app.server.routes import consumer, multiplex, producer

Endpoint = Callable[[WebSocket, str], Awaitable[None]]

ENDPOINTS: Final[dict[str, Endpoint]] = {"consumer": consumer.serve, "producer": producer.serve}


def match(scope: Scope) -> tuple[Endpoint, str] | None:
    """The handler and channel for a handshake's path (without the root path), or None when the path
    is not ``/ws`` nor under ``/ws/consumer`` or ``/ws/producer``."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    if path in ("/ws", "/ws/"):
        return multiplex.serve, ""
    parts = path.split("/", 3)
    if len(parts) < 3 or parts[0] or parts[1] != "ws":
        return None
    endpoint = ENDPOINTS.get(parts[2])
    if endpoint is None:
        return None
    # everything after /ws/<kind>/ is the channel, slashes included: the server has decoded the
    # path (a%2Fb is a/b, ..%2F is ../), and the endpoint refuses what is no channel name with 400
    return endpoint, parts[3] if len(parts) == 4 else DEFAULT_CHANNEL
