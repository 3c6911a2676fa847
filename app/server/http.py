"""Every connection's first bytes: request heads bounded in size and in time.

uvicorn's httptools protocol reads a request head of any size at any pace: an 8 MB header was
answered, two thousand connections that never finished their head stayed open, and a WebSocket
handshake whose header line the WebSocket library then refused got no answer at all.
:class:`HttpProtocol` reads every connection, HTTP request and WebSocket handshake alike, up to
the end of its head, and refuses

- a request target (path and query) over :data:`MAX_TARGET_BYTES`: ``414``;
- more than :data:`MAX_HEADERS` header fields, or more than ``RELAY_MAX_HEADER_BYTES`` of them
  (each field counted as ``name: value`` and its line end): ``431``;
- a head not complete within ``RELAY_HANDSHAKE_TIMEOUT`` of the connection's opening (or, on a
  kept-alive connection, of the request's first byte): ``408``; a connection that sent nothing
  by then is just closed.

A refusal is a JSON error body (``app.protocol.frames.error_body``) with ``Connection: close``,
then a lingering close: the relay stops writing and reading is kept up (what arrives is dropped)
for :data:`LINGER` seconds or until the client closes, so that a client still sending its head
reads the answer instead of a reset. Heads within the limits go on to uvicorn as before; those
that ask for an upgrade go to the WebSocket protocol, whose own limits :func:`lift_websocket_limits`
sets above these.

Each accepted socket's kernel send buffer is capped at ``RELAY_SEND_BUFFER_BYTES``: what a client
that stops reading can pin in the kernel is bounded per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any, ClassVar, Final

import httptools
import websockets.http11
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app import metrics
from app.protocol.codes import ErrorCode
from app.protocol.frames import error_body
from app.server.stream import EXTENSION as STREAM_EXTENSION
from app.settings import Settings

log = logging.getLogger("relay.http")

MAX_TARGET_BYTES: Final = 8192
"""The longest request target (path and query string) served; longer gets 414."""
MAX_HEADERS: Final = 256
"""The most header fields in a request head; more gets 431."""
LINGER: Final = 2.0
"""Seconds a refused connection keeps reading (and dropping) before it is closed."""
_LINE_SLACK: Final = 1024
"""Room for the method, the HTTP version and the line ends around the target and the fields."""


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the refusal itself is on the protocol."""


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded request heads (see the module docstring)."""

    max_header_bytes: ClassVar[int] = 32 * 1024
    head_timeout: ClassVar[float] = 5.0
    send_buffer: ClassVar[int] = 128 * 1024

    @classmethod
    def configured(cls, settings: Settings) -> type[HttpProtocol]:
        """The protocol class with the limits of ``settings``."""
        limits = {
            "max_header_bytes": settings.max_header_bytes,
            "head_timeout": settings.handshake_timeout,
            "send_buffer": settings.send_buffer_bytes,
        }
        return type(cls.__name__, (cls,), limits)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # from the connection's opening, or a request's first byte, to its head's end
        self._began = False  # the current head's first byte has come
        self._head_bytes = 0  # received while in a head (whole reads: a bound, not an exact count)
        self._field_bytes = 0
        self._fields = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, ErrorCode, str] | None = None
        self._refusal_waits = False  # for the answer to an earlier request on the connection
        self._linger: asyncio.TimerHandle | None = None
        self.resumes = 0  # times the transport took data again after a pause
        self.on_lost: Callable[[], None] | None = None  # a stream's: told when the client is gone

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap_send_buffer(transport, self.send_buffer)
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)
        if self.on_lost is not None:
            self.on_lost()

    def data_received(self, data: bytes) -> None:
        """uvicorn's own, but for a refusal raised from a callback, answered as itself."""
        if self._refusal is not None:
            return  # lingering: dropped
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._send_refusal()
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        if not self._in_head:
            return
        if self._began:  # the read where the head began may hold the end of an earlier body
            self._began = False
            return
        self._head_bytes += len(data)
        # a head that never ends is refused once it holds more than any head that is served
        if self._head_bytes > MAX_TARGET_BYTES + self.max_header_bytes + _LINE_SLACK:
            self._refuse_now(431, ErrorCode.HEADERS_TOO_LARGE, self._fields_detail())

    def eof_received(self) -> None:
        if self._refusal is not None:
            self.transport.close()

    # -- parser callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = self._began = True
        self._head_bytes = self._field_bytes = self._fields = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_TARGET_BYTES:
            self._refusal = (
                414,
                ErrorCode.URI_TOO_LONG,
                f"the request target is over {MAX_TARGET_BYTES} bytes",
            )
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._fields += 1
        self._field_bytes += len(name) + len(value) + 4
        if self._fields > MAX_HEADERS or self._field_bytes > self.max_header_bytes:
            self._refusal = (431, ErrorCode.HEADERS_TOO_LARGE, self._fields_detail())
            raise _Refused

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # a request (not an upgrade): a new cycle
            # what lets a streamed response write its prepared chunks itself (app.server.stream)
            self.scope["extensions"] = {STREAM_EXTENSION: {"cycle": cycle, "protocol": self}}

    def resume_writing(self) -> None:
        self.resumes += 1  # the client read what was waiting: a stream's sign of life
        super().resume_writing()

    # -- refusals ------------------------------------------------------------------------------------

    def _fields_detail(self) -> str:
        return f"request headers over {self.max_header_bytes} bytes or {MAX_HEADERS} fields"

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if not self._began and self._head_bytes == 0:
            metrics.HTTP_REFUSED.labels(ErrorCode.REQUEST_TIMEOUT.value).inc()
            self.transport.close()  # nothing was asked: nothing to answer
        else:
            self._refuse_now(
                408, ErrorCode.REQUEST_TIMEOUT, f"no complete request head in {self.head_timeout:g}s"
            )

    def _refuse_now(self, status: int, code: ErrorCode, detail: str) -> None:
        self._refusal = (status, code, detail)
        self._send_refusal()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # the next pipelined request starts, if there is one
        if self._refusal_waits and self.cycle.response_complete and not self.transport.is_closing():
            self._refusal_waits = False
            self._unset_keepalive_if_required()
            self._write_refusal()

    def _send_refusal(self) -> None:
        """Answer the refusal now, or after the requests before it on the connection (pipelined)."""
        assert self._refusal is not None
        self._in_head = False
        self._stop_head_timer()
        metrics.HTTP_REFUSED.labels(self._refusal[1].value).inc()
        if self.cycle is not None and not self.cycle.response_complete:
            self._refusal_waits = True
        else:
            self._write_refusal()

    def _write_refusal(self) -> None:
        assert self._refusal is not None
        status, code, detail = self._refusal
        log.debug("%s: %d %s", _peer(self.client), status, detail)
        body = error_body(code, detail)
        head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(
            body
        )
        self.transport.write(STATUS_LINE[status] + head + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger = self.loop.call_later(LINGER, self.transport.close)
        else:
            self.transport.close()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


def cap_send_buffer(transport: asyncio.BaseTransport, size: int) -> None:
    """Cap the kernel's send buffer of ``transport``'s socket (Linux doubles what is asked)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and size > 0:
        with contextlib.suppress(OSError):  # not a socket that has one
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def reset(transport: asyncio.BaseTransport) -> None:
    """Close ``transport`` at once, dropping what it and the kernel still hold (a TCP reset)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


def lift_websocket_limits(settings: Settings) -> None:
    """Let the WebSocket libraries parse every handshake that :class:`HttpProtocol` lets through.

    They parse the handshake again, with limits of their own (websockets: 8,192 bytes a line,
    128 fields) that are below the relay's: a handshake over them got no answer. Their limits are
    module settings (also read from ``WEBSOCKETS_MAX_LINE_LENGTH`` and
    ``WEBSOCKETS_MAX_NUM_HEADERS``).
    """
    line = MAX_TARGET_BYTES + settings.max_header_bytes + _LINE_SLACK
    modules = [websockets.http11]
    legacy = sys.modules.get("websockets.legacy.http")  # imported by RELAY_WS=websockets only
    if legacy is not None:
        modules.append(legacy)
    for module in modules:
        module.MAX_LINE_LENGTH = max(module.MAX_LINE_LENGTH, line)  # type: ignore[attr-defined]
        module.MAX_NUM_HEADERS = max(module.MAX_NUM_HEADERS, MAX_HEADERS)  # type: ignore[attr-defined]


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"
