"""Frames written straight to a connection's transport: the fan-out's fast path.

Through ASGI, every delivery is a ``websocket.send`` message that Starlette and uvicorn turn into
a frame for that one socket. A message fanned out to many consumers is the same frame for all of
them, built once (:class:`app.fanout.sink.Frame`), so the relay writes its bytes to each
transport. ``relay serve`` runs uvicorn with :class:`WireProtocol`, the relay's
``websockets-sansio`` protocol (:mod:`app.server.websocket`) plus an ASGI scope extension,
``relay.wire``, holding the connection's :class:`Wire`. Where the extension is missing (another server, Starlette's test client),
:func:`wire_of` returns None and everything goes through ASGI (:mod:`app.server.outlet`).

A :class:`Wire` is *open* from the accepted handshake until a close frame went out, the client
left or the transport stopped accepting data (its buffer over the high-water mark): only then may
bytes be written without waiting. Connections that negotiated an extension (permessage-deflate)
get no wire: their frames must go through the extension.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from starlette.websockets import WebSocket, WebSocketDisconnect

from app.fanout.sink import Frame, encode
from app.protocol.codes import Close
from app.server.websocket import WebSocketProtocol
from app.wakeup import Wakeup

EXTENSION: Final = "relay.wire"


class Wire:
    """Writes prepared frames to one connection's transport (a :class:`app.fanout.sink.Sink`)."""

    __slots__ = ("_protocol", "open")

    direct: Final = True  # ``write`` can succeed: the fan-out may write here itself

    def __init__(self, protocol: WireProtocol) -> None:
        self._protocol = protocol
        self.open = False

    @property
    def writable(self) -> bool:
        return self.open

    def write(self, frame: Frame) -> bool:
        """Write now if the wire is open; False (nothing written) otherwise. Never waits."""
        return self._write_now(frame.data)

    def write_texts(self, texts: Sequence[str]) -> bool:
        """Write text frames made from ``texts`` now, in one write, if the wire is open; False
        (nothing written) otherwise. Never waits."""
        return self.open and self._write_now(b"".join([encode(text.encode()) for text in texts]))

    def _write_now(self, data: bytes) -> bool:
        if self.open:
            transport = self._protocol.transport
            # a transport can close itself (a reset while sending) before the protocol hears of it
            if not transport.is_closing():
                try:
                    transport.write(data)
                    return True
                except RuntimeError:  # uvloop: the handle is already closed
                    pass
            self.open = False
        return False

    @property
    def inbox(self) -> Inbox:
        """The connection's incoming events; whoever sets its listener may read without waiting."""
        return self._protocol.queue  # type: ignore[return-value]

    async def send(self, frames: Sequence[Frame]) -> None:
        """Write ``frames`` in order, in one write, once the transport takes data."""
        await self._send(frames[0].data if len(frames) == 1 else b"".join([f.data for f in frames]))

    async def send_texts(self, texts: Sequence[str]) -> None:
        """Write text frames made from ``texts``, in order, in one write."""
        await self._send(b"".join([encode(text.encode()) for text in texts]))

    async def _send(self, data: bytes) -> None:
        """Write once the transport takes data; WebSocketDisconnect when the client is gone."""
        protocol = self._protocol
        if not self.open:
            await protocol.writable.wait()
            if not self.open:
                raise WebSocketDisconnect(Close.ABNORMAL)
        transport = protocol.transport
        if transport.is_closing():
            raise WebSocketDisconnect(Close.ABNORMAL)
        try:
            transport.write(data)
        except RuntimeError as exc:  # uvloop: the handle closed before the protocol heard
            raise WebSocketDisconnect(Close.ABNORMAL) from exc


class Inbox:
    """What the protocol hands the application (``websocket.receive`` events), in order.

    Takes the place of the ``asyncio.Queue`` uvicorn makes per connection, whose three deques
    weigh 2.3 KB, a tenth of an idle consumer; only what the protocol uses of it is here. It
    holds a few events at most (uvicorn stops reading until the application has taken them).
    Its listener, told of each event as it arrives, may take it there and then (returns True):
    the event is not kept, and the protocol reads on.
    """

    __slots__ = ("_arrived", "_items", "listener")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._arrived: Wakeup | None = None  # made by the first get that waits: most never do
        self.listener: Callable[[Any], bool] | None = None  # told of each event as it arrives

    def put_nowait(self, item: Any) -> None:
        items = self._items
        items.append(item)  # before the listener: a reader it starts finds it there, however soon it runs
        listener = self.listener
        if listener is not None and listener(item):
            items.pop()  # taken at once (the last: nothing is taken at once past a waiting event)
            return
        if self._arrived is not None:
            self._arrived.set()

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    async def get(self) -> Any:
        while not self._items:
            if self._arrived is None:
                self._arrived = Wakeup()
            await self._arrived.wait()
        return self._items.pop(0)


def _tracked(name: str) -> Any:
    """A protocol attribute whose every assignment, wherever upstream makes it, updates the wire."""
    private = f"_{name}"

    def get(protocol: WireProtocol) -> bool:
        return bool(getattr(protocol, private))

    def set_(protocol: WireProtocol, value: bool) -> None:
        setattr(protocol, private, value)
        protocol._update()

    return property(get, set_)


class WireProtocol(WebSocketProtocol):
    """The relay's ``websockets-sansio`` protocol (:mod:`app.server.websocket`), offering a
    :class:`Wire` to the application.

    The wire's ``open`` flag follows the protocol's own state: the handshake, a close frame sent
    (``close_sent`` is set in several places upstream, hence the tracked attributes), the client
    gone, the transport paused or closing.
    """

    __slots__ = ("_close_sent", "_disconnected", "_handshake_complete", "_paused", "_wire")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # before upstream's __init__, whose first assignments of the tracked attributes update the wire
        self._handshake_complete = False
        self._close_sent = False
        self._disconnected = False
        self._paused = False
        self._wire: Wire | None = None
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and not self.conn.extensions:
            self._wire = Wire(self)
            scope["extensions"][EXTENSION] = {"wire": self._wire}

    def _update(self) -> None:
        wire = self._wire
        if wire is not None:
            wire.open = (
                self._handshake_complete
                and not self._close_sent
                and not self._disconnected
                and not self._paused
                and not self.transport.is_closing()
            )

    handshake_complete = _tracked("handshake_complete")
    close_sent = _tracked("close_sent")
    disconnected = _tracked("disconnected")

    def pause_writing(self) -> None:
        self._paused = True
        self._update()
        super().pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        self._update()
        super().resume_writing()

    def handle_close(self, event: Any) -> None:
        super().handle_close(event)  # the client's close: answered, and the transport closed
        self._update()

    def shutdown(self) -> None:
        super().shutdown()
        self._update()


def wire_of(websocket: WebSocket) -> Wire | None:
    extension = websocket.scope.get("extensions", {}).get(EXTENSION)
    return None if extension is None else extension.get("wire")
