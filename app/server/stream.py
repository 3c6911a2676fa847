"""A streamed HTTP response written straight to its transport: the fast path of Server-Sent Events.

Through ASGI every event would be an ``http.response.body`` message that uvicorn frames as a
chunk for that one response. A message fanned out to many streams is the same event for all of
them, made once and already framed as a chunk (:attr:`app.fanout.sink.Frame.event`), so the relay
writes those bytes to each stream's transport, as :mod:`app.server.wire` does for WebSockets.

``relay serve`` runs uvicorn with :class:`app.server.http.HttpProtocol`, which puts each request's
cycle in the ASGI scope extension ``relay.http``. A response takes the fast path only once its
head went out through ASGI with chunked encoding (no ``Content-Length``): from then on uvicorn
writes nothing of its own until the body's end, which also goes through ASGI. Where the extension
is missing (another server, the test client) every event goes through ASGI (:class:`AsgiStream`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from starlette.types import Receive, Scope, Send

from app.fanout.sink import Frame
from app.protocol import events

EXTENSION: Final = "relay.http"


class Gone(Exception):
    """The client went away: nothing more can be written."""


class Stream(Protocol):
    """Where a streamed response's events go (a :class:`app.fanout.sink.Sink`, and more)."""

    @property
    def direct(self) -> bool:
        """Whether ``write`` can succeed (the fan-out may write here itself)."""
        ...

    @property
    def writable(self) -> bool:
        """Whether the transport takes data now (True where that cannot be known: ASGI)."""
        ...

    def write(self, frame: Frame) -> bool:
        """Write the frame's event now, without waiting, or return False (nothing written)."""
        ...

    async def send(self, frames: Sequence[Frame]) -> None:
        """Write the frames' events in order, waiting while the transport takes no data; raises
        :class:`Gone` when the client is gone."""

    async def send_raw(self, data: bytes) -> None:
        """The same for bytes of the event stream not made from a frame (the first event, pings)."""

    @property
    def resumes(self) -> int:
        """How many times the transport took data again after a pause (0 where unknown)."""
        ...

    def abort(self) -> None:
        """Drop the connection at once (a client that reads nothing)."""

    def watch(self, left: Callable[[], None]) -> None:
        """Call ``left`` once the client has gone away."""

    async def unwatch(self) -> None:
        """Stop watching: the stream is over, and nothing more is written but its end."""


class DirectStream:
    """Events written to the transport of the response's cycle (uvicorn's httptools protocol)."""

    __slots__ = ("_cycle", "_done", "_protocol")

    direct: Final = True

    def __init__(self, cycle: Any, protocol: Any) -> None:
        self._cycle = cycle  # uvicorn.protocols.http.httptools_impl.RequestResponseCycle
        self._protocol = protocol  # app.server.http.HttpProtocol
        self._done = False  # the stream is over: nothing more may be written (its end comes next)

    @property
    def resumes(self) -> int:
        resumes: int = self._protocol.resumes
        return resumes

    @property
    def writable(self) -> bool:
        cycle = self._cycle
        return not (
            self._done or cycle.disconnected or cycle.flow.write_paused or cycle.transport.is_closing()
        )

    def write(self, frame: Frame) -> bool:
        if self.writable:
            try:
                self._cycle.transport.write(frame.event)
                return True
            except RuntimeError:  # uvloop: the handle closed before the protocol heard
                pass
        return False

    async def send(self, frames: Sequence[Frame]) -> None:
        await self._send(frames[0].event if len(frames) == 1 else b"".join([f.event for f in frames]))

    async def send_raw(self, data: bytes) -> None:
        await self._send(events.chunk(data))

    def abort(self) -> None:
        self._cycle.transport.abort()

    def watch(self, left: Callable[[], None]) -> None:
        self._protocol.on_lost = left  # told by the protocol's connection_lost: no task per stream

    async def unwatch(self) -> None:
        self._done = True
        self._protocol.on_lost = None

    async def _send(self, framed: bytes) -> None:
        cycle = self._cycle
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected or cycle.transport.is_closing():
            raise Gone
        try:
            cycle.transport.write(framed)
        except RuntimeError as exc:
            raise Gone from exc


class AsgiStream:
    """Events as ASGI ``http.response.body`` messages: for servers without the extension."""

    __slots__ = ("_listener", "_receive", "_send")

    direct: Final = False
    writable: Final = True
    resumes: Final = 0

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._listener: asyncio.Task[None] | None = None

    def write(self, frame: Frame) -> bool:
        return False

    async def send(self, frames: Sequence[Frame]) -> None:
        await self.send_raw(b"".join([events.unchunk(f.event) for f in frames]))

    async def send_raw(self, data: bytes) -> None:
        # a server drops what is sent after the client left; the stream hears of it from receive()
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    def abort(self) -> None:
        """ASGI has no way to: the stream ends, and the server deals with the connection."""

    def watch(self, left: Callable[[], None]) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._until_gone(left))

    async def unwatch(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def _until_gone(self, left: Callable[[], None]) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass  # the request's body: a GET has none worth reading
        left()


def stream_of(scope: Scope, receive: Receive, send: Send) -> Stream:
    """The response's direct stream when the server offers one, else ASGI's."""
    extension = scope.get("extensions", {}).get(EXTENSION)
    if extension is None:
        return AsgiStream(receive, send)
    return DirectStream(extension["cycle"], extension["protocol"])
