"""Server-Sent Events: the ``text/event-stream`` form of what a consumer receives.

=================  =========================================================================
``subscribed``     ``id: <position>``, ``data: {"channel":C,"id":"<position>"}``
``message``        ``id: <entry id>``, ``data: <the producer's JSON>`` on one line
``gap``            no ``id:`` (a reconnect before the next message is told again),
                   ``data: {"from":"...","next":"..."}``
``: ping``         a comment, at least every 15 s, so that proxies keep a quiet stream open
=================  =========================================================================

An event is built from the frame a WebSocket consumer gets (:mod:`app.protocol.frames`), whose
layout the relay writes itself, so its parts are cut out of the text rather than parsed. JSON
keeps line ends only as whitespace between tokens (inside strings they are escaped), so a
producer's multi-line JSON becomes one ``data:`` line by turning them into spaces.

On HTTP/1.1 a streamed response's body goes out in chunks (RFC 9112 section 7.1): :func:`chunk`
frames an event as one, so that a prepared event can be written straight to a transport.
"""

from __future__ import annotations

from typing import Final

PING: Final = b": ping\n\n"

_MESSAGE: Final = '{"type":"message","id":"'
_GAP: Final = '{"type":"gap",'
_DATA: Final = ',"data":'
_FROM: Final = '"from"'


def subscribed(channel: str, position: str) -> bytes:
    return (
        f'event: subscribed\nid: {position}\ndata: {{"channel":"{channel}","id":"{position}"}}\n\n'.encode()
    )


def retry(milliseconds: int) -> bytes:
    """How long an EventSource waits before it reconnects."""
    return b"retry: %d\n\n" % milliseconds


def of_frame(text: str) -> bytes:
    """The event for a ``message`` or ``gap`` frame's text."""
    if text.startswith(_MESSAGE):
        end = text.index('"', len(_MESSAGE))
        data = text[text.index(_DATA, end) + len(_DATA) : -1]
        if "\n" in data or "\r" in data:
            data = data.replace("\r", " ").replace("\n", " ")
        return f"event: message\nid: {text[len(_MESSAGE) : end]}\ndata: {data}\n\n".encode()
    if text.startswith(_GAP):
        return f"event: gap\ndata: {{{text[text.index(_FROM) :]}\n\n".encode()
    raise ValueError(f"expected a message or gap frame, got {text[:40]!r}")


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked HTTP/1.1 body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def unchunk(framed: bytes) -> bytes:
    """What :func:`chunk` framed."""
    return framed[framed.index(b"\r\n") + 2 : -2]
