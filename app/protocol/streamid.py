"""Redis Stream entry ids: ``<milliseconds>-<sequence>``, the cursor every resume is built on.

Ids travel as the strings Redis gives (``"1732540000000-0"``) and are compared as ``(ms, seq)``
tuples; both halves are unsigned 64-bit integers.
"""

from __future__ import annotations

import re

StreamId = tuple[int, int]

ZERO: StreamId = (0, 0)
_MAX_U64 = 2**64 - 1
_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


def parse(text: str) -> StreamId:
    """Parse an id as Redis writes it. Only for ids that came from Redis: no validation."""
    ms, _, seq = text.partition("-")
    return (int(ms), int(seq))


def validate(text: str) -> StreamId | None:
    """Parse an id a client sent; ``None`` when it is not a complete, in-range entry id."""
    match = _ID.fullmatch(text)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    if ms > _MAX_U64 or seq > _MAX_U64:
        return None
    return (ms, seq)


def format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"
