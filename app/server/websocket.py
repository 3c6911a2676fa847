"""The edges of a WebSocket connection: handshakes refused, peers that stop reading, bad frames.

:class:`WebSocketProtocol` is uvicorn's ``websockets-sansio`` protocol (``RELAY_WS=websockets-sansio``,
and the base of the wire, :mod:`app.server.wire`) with these changes:

- **A handshake the WebSocket parser refuses gets an answer.** Upstream, a request that
  websockets could not parse was held open with no reply; it now gets websockets' own reply
  (414, 431) or a 400, and is closed. (Heads over the relay's limits never reach it:
  :mod:`app.server.http` refuses them first.)
- **A peer that stops reading is dropped, and its socket released.** A keepalive ping left
  unanswered for ``RELAY_WS_PING_TIMEOUT``, or a close the relay started and the peer did not
  complete within as long, ends in a reset: the transport is aborted with ``SO_LINGER`` 0, so
  neither the relay's buffer nor the kernel's send queue waits for a reader that never comes.
  Upstream closed the transport gracefully, which waits for the unsent data to drain: forever.
- **A frame that breaks the protocol is one line in the log, said by the relay.** Invalid UTF-8
  in a text frame closes with 1007 and no traceback; that close, the parser's own (1002, 1009)
  and the keepalive's (1011) reach the application as a ``websocket.disconnect`` carrying
  :data:`CLOSED_BY_RELAY`, so that its connection line says who closed.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, ClassVar, Final

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers

from app import metrics
from app.protocol.codes import Close, ErrorCode
from app.protocol.frames import error_body
from app.server.http import reset
from app.wakeup import Gate

CLOSED_BY_RELAY: Final = "relay.closed_by_relay"
"""Key of a ``websocket.disconnect`` event that the relay's own close caused (value True)."""

_NO_HEADERS: Final = Headers()
"""What a handshake's request is left with once it is accepted (nothing reads it after)."""

_ADDRESSES: dict[tuple[str, int | None], tuple[str, int | None]] = {}
"""The server's own addresses, one tuple each, shared by the connections (``connection_made``)."""

_BAD_HANDSHAKE: Final = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n"
)


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol with the edges above handled."""

    # Every attribute upstream sets, in slots: with about forty of them its instance dict outgrew
    # CPython's shared keys and took 1.6 KB per connection (upstream's own assignments land in
    # these slots: a slot is a data descriptor of the class, found before the instance dict).
    __slots__ = (
        "_closed_itself",  # the protocol closed the connection (not the application, not the peer)
        "_ping_slot",  # when its next keepalive ping is due, in the loop's Pings (None: none due)
        "app",
        "app_state",
        "asgi_version",
        "client",
        "close_sent",
        "close_timeout",
        "close_timer",
        "config",
        "conn",
        "connections",
        "curr_msg_data_type",
        "default_headers",
        "disconnected",
        "frames",
        "handshake_complete",
        "handshake_initiated",
        "initial_response",
        "last_ping_rtt",
        "logger",
        "loop",
        "pending_ping_payload",
        "ping_interval",
        "ping_sent_at",
        "ping_timeout",
        "ping_timer",
        "pong_timer",
        "queue",
        "read_paused",
        "request",
        "response",
        "root_path",
        "scheme",
        "scope",
        "server",
        "tasks",
        "transport",
        "writable",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._closed_itself = False
        self._ping_slot: int | None = None
        super().__init__(*args, **kwargs)
        # what send() waits on while the transport is paused: asyncio.Event's deque weighs 0.7 KB
        self.writable = Gate()  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.handshake_initiated and self.conn.handshake_exc is not None:
            self._answer_bad_handshake()

    def send_receive_event_to_app(self) -> None:
        frames = self.frames
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        self.frames = []
        if self.close_sent:
            return  # past the application's close: dropped, while the close reply is awaited
        if self.curr_msg_data_type == "text":
            try:
                event: dict[str, Any] = {"type": "websocket.receive", "text": data.decode()}
            except UnicodeDecodeError:
                self._fail(Close.INVALID_DATA, "invalid UTF-8 in a text frame")
                return
        else:
            event = {"type": "websocket.receive", "bytes": data}
        self.queue.put_nowait(event)  # type: ignore[arg-type]
        # reading pauses until the application takes the event; an inbox's listener that took it
        # at once (app.server.wire) spares the pause and the resume, a system call per frame
        if not self.read_paused and not self.queue.empty():
            self.read_paused = True
            self.transport.pause_reading()

    def handle_parser_exception(self) -> None:
        """websockets refused a frame (too big, a protocol error) and queued its close frame."""
        sent = self.conn.close_sent
        code, reason = (sent.code, sent.reason) if sent is not None else (Close.PROTOCOL_ERROR, "")
        self._closed_by_relay(code, reason)

    def schedule_ping(self) -> None:
        """The next keepalive ping, due in the loop's :class:`Pings` rather than on a timer of its
        own (upstream's ``call_later``: about 0.5 KB a connection, all its life)."""
        assert self.ping_interval is not None
        delay = max(0.0, self.ping_interval - self.last_ping_rtt)
        self._ping_slot = Pings.of(self.loop, self.ping_interval).add(self, delay)

    def stop_keepalive(self) -> None:
        if self._ping_slot is not None:
            pings = Pings.on(self.loop)  # the one it was added to: kept while a ping is due
            if pings is not None:
                pings.discard(self, self._ping_slot)
            self._ping_slot = None
        super().stop_keepalive()

    def ping_due(self) -> None:
        self._ping_slot = None
        self.send_keepalive_ping()

    def keepalive_timeout(self) -> None:
        if self.close_sent or self.transport.is_closing():
            return
        self._closed_itself = True
        self.queue.put_nowait(_disconnect(Close.INTERNAL, "keepalive ping timeout"))  # type: ignore[arg-type]
        super().keepalive_timeout()
        self._drop("keepalive")  # the peer answers nothing: what is queued for it will never be read

    async def send(self, message: Any) -> None:
        if self._closed_itself and message["type"] == "websocket.send":
            raise ClientDisconnected  # as for a client gone: upstream would raise a RuntimeError
        await super().send(message)
        kind = message["type"]
        if kind == "websocket.close" and self.close_timer is not None:
            self._reset_later()  # upstream's timer closes gracefully: forever, for a peer that does not read
        elif kind == "websocket.accept" and self.handshake_complete:
            self._forget_handshake()

    def _forget_handshake(self) -> None:
        """The handshake's request and response are kept for nothing once it is done: 2.5 KB. The
        request's headers, a list per field, go too: websockets' parser keeps the request itself
        for the connection's life (a local of its generator), 2.7 KB more."""
        request = getattr(self, "request", None)
        if request is not None:
            request.headers = _NO_HEADERS  # its own empty dict and list would stay too
            request.path = ""
            del self.request
        if getattr(self, "response", None) is not None:
            del self.response

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # every connection's local address is one of the few the server listens on: one tuple for
        # all of them, not a tuple, a string and a number each (0.14 KB a connection)
        if self.server is not None:
            self.server = _ADDRESSES.setdefault(self.server, self.server)

    def on_task_complete(self, task: asyncio.Task[None]) -> None:
        """The application is done (upstream then closed the transport, gracefully): a peer that
        does not read is reset after the bound. A done callback, not an override of ``run_asgi``,
        whose extra coroutine frame would stay alive as long as the connection: 0.25 KB each."""
        super().on_task_complete(task)
        if not self.disconnected and self.close_timer is None:
            self._reset_later()

    # -- helpers -----------------------------------------------------------------------------------

    def _fail(self, code: int, reason: str) -> None:
        self.conn.fail(code, reason)
        self._closed_by_relay(code, reason)

    def _closed_by_relay(self, code: int, reason: str) -> None:
        self._closed_itself = True
        self.queue.put_nowait(_disconnect(code, reason))  # type: ignore[arg-type]
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()
        self._reset_later()

    def _answer_bad_handshake(self) -> None:
        if self.transport.is_closing():
            return
        prepared = b"".join(self.conn.data_to_send())  # websockets' own 414 or 431, if it made one
        if not prepared:
            body = error_body(
                ErrorCode.INVALID_REQUEST, f"invalid WebSocket handshake: {self.conn.handshake_exc}"
            )
            prepared = _BAD_HANDSHAKE % len(body) + body
        self.transport.write(prepared)
        self.transport.close()

    def _reset_later(self) -> None:
        """Reset the connection unless it is gone within ``RELAY_WS_PING_TIMEOUT`` (the one timer:
        any earlier one is let go)."""
        if self.close_timer is not None:
            self.close_timer.cancel()
        bound = self.ping_timeout if self.ping_timeout else self.close_timeout
        self.close_timer = self.loop.call_later(bound, self._drop, "close_timeout")

    def _drop(self, reason: str) -> None:
        self.close_timer = None
        if not self.disconnected:
            metrics.RESETS.labels(reason).inc()
            reset(self.transport)


class Pings:
    """The keepalive pings due on one event loop, by slot of time: one timer for every connection.

    A slot is a tick of an eighth of the ping interval (at most a second), so a ping goes out at
    most a tick after it is due. The timer runs only while a ping is due; the loop's Pings are let
    go with the last one.
    """

    _of_loop: ClassVar[dict[asyncio.AbstractEventLoop, Pings]] = {}

    __slots__ = ("_due", "_loop", "_tick", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._loop = loop
        self._tick = min(1.0, interval / 8)
        self._due: dict[int, set[WebSocketProtocol]] = {}
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def on(cls, loop: asyncio.AbstractEventLoop) -> Pings | None:
        """The loop's Pings, if any ping is due on it."""
        return cls._of_loop.get(loop)

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, interval: float) -> Pings:
        pings = cls._of_loop.get(loop)
        if pings is None:
            pings = cls._of_loop[loop] = cls(loop, interval)
        return pings

    def add(self, protocol: WebSocketProtocol, delay: float) -> int:
        """Ping ``protocol`` (its ``ping_due``) ``delay`` seconds from now; its slot."""
        slot = math.ceil((self._loop.time() + delay) / self._tick)
        bucket = self._due.get(slot)
        if bucket is None:
            bucket = self._due[slot] = set()
        bucket.add(protocol)
        if self._timer is None:
            self._timer = self._loop.call_later(self._tick, self._fire)
        return slot

    def discard(self, protocol: WebSocketProtocol, slot: int) -> None:
        bucket = self._due.get(slot)
        if bucket is not None:
            bucket.discard(protocol)
            if not bucket:
                del self._due[slot]
        if not self._due:
            self._close()

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time() / self._tick
        for slot in [slot for slot in self._due if slot <= now]:
            for protocol in self._due.pop(slot):
                protocol.ping_due()  # may add it again, to a later slot
        if self._due:
            self._timer = self._loop.call_later(self._tick, self._fire)
        else:
            self._close()

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._of_loop.get(self._loop) is self:
            del self._of_loop[self._loop]


def _disconnect(code: int, reason: str) -> dict[str, Any]:
    return {"type": "websocket.disconnect", "code": code, "reason": reason, CLOSED_BY_RELAY: True}
