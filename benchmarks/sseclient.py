"""A lean Server-Sent Events client: ``GET /channels/C/events`` over a raw asyncio protocol.

The counterpart of :mod:`benchmarks.wsclient` for E1: one HTTP/1.1 request, then the response's
chunked body (RFC 9112 section 7.1) cut into events (``text/event-stream``: blocks of ``field:
value`` lines ending in a blank line). Only what the benchmark needs is read: ``event:`` (message,
subscribed, gap), ``id:`` and the one ``data:`` line the relay writes per event; comments (``:
ping``) and ``retry:`` are skipped. Per message the handler gets the ``data:`` bytes (the
producer's JSON, where ``seq`` and ``ts`` are found as on a WebSocket), and the ``id:`` is checked
to increase along the stream. Nothing is decoded; the per-event path is a few ``find``/slices.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast
from urllib.parse import urlsplit

from benchmarks.wsclient import HandshakeFailed

_HEAD_END = b"\r\n\r\n"
_EVENT_END = b"\n\n"
_MESSAGE = b"event: message\nid: "
_DATA = b"\ndata: "
_MAX_HEAD = 64 * 1024


class EventHandler(Protocol):
    """What a stream's events go to (``benchmarks.loadgen.Consumer``)."""

    def on_text(self, data: bytes) -> None:
        """A ``message`` event's data (the producer's JSON)."""

    def on_subscribed(self) -> None: ...

    def on_gap(self) -> None: ...

    def on_disorder(self) -> None:
        """A ``message`` whose ``id`` is not above the previous one on this stream."""

    def on_unknown(self, block: bytes) -> None:
        """An event that is none of the above (nor a comment or ``retry:``)."""


class SseConnection(asyncio.Protocol):
    """One stream. ``opened`` resolves on a ``200`` head with a chunked body."""

    def __init__(self, host: str, target: str, handler: EventHandler) -> None:
        self._request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
            "Cache-Control: no-cache\r\n\r\n"
        ).encode()
        self._handler = handler
        self._transport: asyncio.Transport | None = None
        self._head = True  # still reading the response head
        self._raw = b""  # bytes not yet cut into chunks (a partial size line or chunk)
        self._need = 0  # bytes of the current chunk still to come, its CRLF included; 0: a size line next
        self._text = b""  # the body's text not yet cut into events (a partial event)
        self._last_id = (-1, -1)
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.ended = False  # the body's last chunk arrived (the relay ended the stream)

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._raw:
            data = self._raw + data
            self._raw = b""
        if self._head:
            end = data.find(_HEAD_END)
            if end < 0:
                self._raw = data
                if len(data) > _MAX_HEAD:
                    self._fail(HandshakeFailed("response head too long"))
                return
            if not self._accept(data[:end]):
                return
            self._head = False
            data = data[end + 4 :]
        self._chunks(data)

    def eof_received(self) -> bool | None:
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeFailed(f"connection lost before the response: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- the body ----------------------------------------------------------------------------------

    def _accept(self, head: bytes) -> bool:
        status_line, _, fields = head.partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        lower = fields.lower()
        if len(parts) < 2 or parts[1] != b"200":
            self._fail(HandshakeFailed(f"HTTP {status_line[:80]!r}"))
            return False
        if b"transfer-encoding: chunked" not in lower or b"content-type: text/event-stream" not in lower:
            self._fail(HandshakeFailed(f"expected a chunked text/event-stream, got {fields[:300]!r}"))
            return False
        if not self.opened.done():
            self.opened.set_result(None)
        return True

    def _chunks(self, data: bytes) -> None:
        """Cut ``data`` into chunks; whole chunks only (the relay's are one event, or a few)."""
        if self.ended:
            return  # the last chunk's trailer section, or nothing at all
        pos, size = 0, len(data)
        while pos < size:
            need = self._need
            if not need:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    break
                length = int(data[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if length == 0:  # the last chunk: the stream ended
                    self.ended = True
                    return
                need = self._need = length + 2
            if size - pos < need:
                break
            self._events(data[pos : pos + need - 2])
            pos += need
            self._need = 0
        if pos < size:
            self._raw = data[pos:]

    def _events(self, text: bytes) -> None:
        if self._text:
            text = self._text + text
            self._text = b""
        if text.startswith(_MESSAGE) and text.endswith(_EVENT_END) and text.count(_EVENT_END) == 1:
            self._message(text)  # the common case: one chunk, one message event
            return
        pos = 0
        while True:
            end = text.find(_EVENT_END, pos)
            if end < 0:
                break
            self._block(text[pos : end + 2])
            pos = end + 2
        if pos < len(text):
            self._text = text[pos:]

    def _message(self, block: bytes) -> None:
        start = len(_MESSAGE)
        eol = block.index(b"\n", start)
        ms, _, seq = block[start:eol].partition(b"-")
        entry = (int(ms), int(seq))
        handler = self._handler
        if entry <= self._last_id:
            handler.on_disorder()
        else:
            self._last_id = entry
        data = block.find(_DATA, eol)
        if data < 0:
            handler.on_unknown(block)
        else:
            handler.on_text(block[data + len(_DATA) : -2])

    def _block(self, block: bytes) -> None:
        if block.startswith(_MESSAGE):
            self._message(block)
        elif block.startswith((b":", b"retry:")):
            pass  # a comment (ping) or the reconnection delay
        elif block.startswith(b"event: subscribed\n"):
            self._handler.on_subscribed()
        elif block.startswith(b"event: gap\n"):
            self._handler.on_gap()
        else:
            self._handler.on_unknown(block)

    # -- use ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Leave: an event stream ends when its client closes the connection."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        self.abort()


async def connect(url: str, handler: EventHandler, within: float) -> SseConnection:
    """Open ``http://host:port/path?query`` and read the response head ``within`` seconds."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"expected an http://host:port/... URL, got {url!r}")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    port = parts.port or 80
    loop = asyncio.get_running_loop()
    connection: SseConnection | None = None
    try:
        async with asyncio.timeout(within):
            _, connection = await loop.create_connection(
                lambda: SseConnection(f"{parts.hostname}:{port}", target, handler), parts.hostname, port
            )
            await connection.opened
    except BaseException:
        if connection is not None:
            connection.abort()
        raise
    return connection
