"""What the fan-out writes, and where: a frame built once, and one connection's sink.

A message fanned out to many consumers is the same WebSocket frame for all of them (server frames
are not masked, RFC 6455 section 5.1), so it is built once, as a :class:`Frame` holding both its
JSON text and its complete bytes on the wire, and the same object goes to every consumer: the
bytes to connections that write them straight to their socket, the text to those that hand it to
an ASGI server, and, to Server-Sent Event streams, the same message as an event, also made once. A connection that can take bytes without waiting offers the fan-out a
:class:`Sink`; the server's wire implements it (``app.server.wire``).
"""

from __future__ import annotations

import struct
from typing import Protocol

from app.protocol import events


def encode(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame (RFC 6455 section 5.2) carrying ``payload``."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


class Frame:
    """One frame for many consumers: its text, and its bytes as a WebSocket text frame; for a
    ``message`` or ``gap``, also as a Server-Sent Event (made when a stream first needs it)."""

    __slots__ = ("_event", "data", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.data = encode(text.encode())
        self._event: bytes | None = None

    @property
    def event(self) -> bytes:
        """The Server-Sent Event, framed as one chunk of an HTTP/1.1 body (:mod:`app.protocol.events`)."""
        event = self._event
        if event is None:
            event = self._event = events.chunk(events.of_frame(self.text))
        return event


class Sink(Protocol):
    """Where the fan-out writes a connection's frames when nothing else is waiting to be sent."""

    def write(self, frame: Frame) -> bool:
        """Write the frame now if the connection takes data; False (nothing written) otherwise.

        Never waits. After a False the caller keeps this frame and every later one for the
        connection's own writer, so that nothing overtakes it."""
        ...
