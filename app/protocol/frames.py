"""The JSON text of every frame the relay sends.

==================  ========================================================================
``subscribed``      first frame to a consumer: ``channel``, ``id`` (delivery goes on after it);
                    to a group member ``channel`` and ``group``
``message``         ``id``, ``channel``, ``data`` (the producer's JSON, verbatim); to a group
                    member also ``delivery`` (1 the first time, more when delivered again)
``gap``             ``from``, ``next``: messages after ``from`` and before ``next`` are gone
``ack``             to a producer: ``id`` of the stored entry
``error``           ``code`` (:class:`app.protocol.codes.ErrorCode`), ``detail``; on ``/ws``
                    also ``channel`` and ``ref`` when the refused frame had them
==================  ========================================================================

On ``/ws`` (one connection, many channels) the first frame is ``connected`` (``client``: the
connection's id); every reply repeats the client frame's ``ref`` (:data:`Ref`): ``subscribed``,
``unsubscribed``, ``ack``, ``presence``, ``refreshed`` or ``error``. ``join`` and ``leave`` carry
a presence entry (``client``, ``user``, ``info``) as JSON text. ``message`` and ``gap`` frames are
the same on every endpoint (both name their channel), so one frame serves them all.

Channel names, group names and ids are checked before they get here and hold nothing JSON would
escape, so the frames are put together as text; ``data`` is JSON text validated on the way in,
nested at most :data:`MAX_DEPTH` deep.
"""

from __future__ import annotations

from typing import Final

import orjson

from app.protocol.codes import ErrorCode

MAX_DEPTH: Final = 128
"""How deep a message's arrays and objects may nest (``1`` is 0 deep, ``[[1]]`` 2); the relay
refuses deeper ones with ``invalid_json``. A frame puts ``data`` one level deeper, a history page
three (page, ``messages``, message): what the relay sends nests at most 131 deep, which every
common JSON parser reads (Python's own ``json`` included, whose limit is the recursion limit) and
orjson can write back (254)."""


def subscribed(channel: str, position: str) -> str:
    return f'{{"type":"subscribed","channel":"{channel}","id":"{position}"}}'


def message(entry_id: str, channel: str, data: str) -> str:
    return f'{{"type":"message","id":"{entry_id}","channel":"{channel}","data":{data}}}'


def group_subscribed(channel: str, group: str) -> str:
    return f'{{"type":"subscribed","channel":"{channel}","group":"{group}"}}'


def group_message(entry_id: str, channel: str, data: str, delivery: int) -> str:
    return f'{{"type":"message","id":"{entry_id}","channel":"{channel}","data":{data},"delivery":{delivery}}}'


def gap(channel: str, after: str, next_id: str) -> str:
    return f'{{"type":"gap","channel":"{channel}","from":"{after}","next":"{next_id}"}}'


def ack(entry_id: str) -> str:
    return f'{{"type":"ack","id":"{entry_id}"}}'


Ref = str
"""A client frame's ``ref`` as JSON text (``"a"``, ``17``), or ``""`` when it had none."""


def _ref(ref: Ref) -> str:
    return f',"ref":{ref}' if ref else ""


def connected(client: str) -> str:
    return f'{{"type":"connected","client":"{client}"}}'


def subscribed_to(channel: str, position: str, ref: Ref) -> str:
    """The reply to a ``subscribe`` on ``/ws``."""
    return f'{{"type":"subscribed","channel":"{channel}","id":"{position}"{_ref(ref)}}}'


def unsubscribed(channel: str, ref: Ref) -> str:
    return f'{{"type":"unsubscribed","channel":"{channel}"{_ref(ref)}}}'


def acked(channel: str, entry_id: str, ref: Ref) -> str:
    """The reply to a ``publish`` on ``/ws``."""
    return f'{{"type":"ack","channel":"{channel}","id":"{entry_id}"{_ref(ref)}}}'


def presence(channel: str, clients: list[str], ref: Ref) -> str:
    """The reply to a ``presence`` frame; ``clients`` are presence entries as JSON text."""
    return f'{{"type":"presence","channel":"{channel}","clients":[{",".join(clients)}]{_ref(ref)}}}'


def refreshed(ref: Ref) -> str:
    return f'{{"type":"refreshed"{_ref(ref)}}}'


def pong(ref: Ref) -> str:
    """The reply to a ``ping`` frame (a client's own liveness check)."""
    return f'{{"type":"pong"{_ref(ref)}}}'


def joined(channel: str, client: str) -> str:
    """Another connection subscribed to ``channel``; ``client`` is its presence entry (JSON)."""
    return f'{{"type":"join","channel":"{channel}","client":{client}}}'


def left(channel: str, client: str) -> str:
    return f'{{"type":"leave","channel":"{channel}","client":{client}}}'


def error_body(code: ErrorCode, detail: str) -> bytes:
    """An error as JSON bytes (``detail`` may hold anything: it is escaped)."""
    return orjson.dumps({"type": "error", "code": code, "detail": detail})


def error(code: ErrorCode, detail: str, channel: str | None = None, ref: Ref = "") -> str:
    """An error frame; ``channel`` (escaped: a refused name may hold anything) and ``ref`` when the
    refused frame named them."""
    if channel is None:
        text = error_body(code, detail).decode()
    else:
        text = orjson.dumps({"type": "error", "code": code, "detail": detail, "channel": channel}).decode()
    return f"{text[:-1]}{_ref(ref)}}}" if ref else text
