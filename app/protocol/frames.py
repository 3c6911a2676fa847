"""The JSON text of every frame the relay sends.

==================  ========================================================================
``subscribed``      first frame to a consumer: ``channel``, ``id`` (delivery goes on after it);
                    to a group member ``channel`` and ``group``
``message``         ``id``, ``channel``, ``data`` (the producer's JSON, verbatim); to a group
                    member also ``delivery`` (1 the first time, more when delivered again)
``gap``             ``from``, ``next``: messages after ``from`` and before ``next`` are gone
``ack``             to a producer: ``id`` of the stored entry
``error``           ``code`` (:class:`app.protocol.codes.ErrorCode`), ``detail``
==================  ========================================================================

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


def gap(after: str, next_id: str) -> str:
    return f'{{"type":"gap","from":"{after}","next":"{next_id}"}}'


def ack(entry_id: str) -> str:
    return f'{{"type":"ack","id":"{entry_id}"}}'


def error_body(code: ErrorCode, detail: str) -> bytes:
    """An error as JSON bytes (``detail`` may hold anything: it is escaped)."""
    return orjson.dumps({"type": "error", "code": code, "detail": detail})


def error(code: ErrorCode, detail: str) -> str:
    return error_body(code, detail).decode()
