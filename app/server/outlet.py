"""Where one connection's frames go: its wire when it has one, else ASGI ``websocket.send``.

Both implement :class:`Outlet`, so a connection writes the same way whatever the server; only the
wire can also take a frame from the fan-out without waiting (``direct``), which is what lets an
idle consumer be parked (:meth:`app.fanout.subscription.Subscription.park`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

from starlette.websockets import WebSocket

from app.fanout.sink import Frame
from app.server.wire import wire_of


class Outlet(Protocol):
    @property
    def direct(self) -> bool:
        """Whether ``write`` can succeed (the fan-out may write here itself)."""
        ...

    @property
    def writable(self) -> bool:
        """Whether the transport takes data now (True where that cannot be known: ASGI)."""
        ...

    def write(self, frame: Frame) -> bool:
        """Write now, without waiting, or return False (nothing written)."""
        ...

    async def send(self, frames: Sequence[Frame]) -> None:
        """Write ``frames`` in order, waiting while the transport takes no data; raises
        ``WebSocketDisconnect`` when the client is gone."""

    async def send_texts(self, texts: Sequence[str]) -> None:
        """The same for frames not built yet (replies, first frames)."""


class AsgiOutlet:
    """Frames as ASGI messages, one each: for servers without the wire (and the test client)."""

    __slots__ = ("_send",)

    direct: Final = False
    writable: Final = True

    def __init__(self, websocket: WebSocket) -> None:
        self._send = websocket.send

    def write(self, frame: Frame) -> bool:
        return False

    async def send(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            await self._send({"type": "websocket.send", "text": frame.text})

    async def send_texts(self, texts: Sequence[str]) -> None:
        for text in texts:
            await self._send({"type": "websocket.send", "text": text})


def outlet_of(websocket: WebSocket) -> Outlet:
    wire = wire_of(websocket)
    return wire if wire is not None else AsgiOutlet(websocket)
