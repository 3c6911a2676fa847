"""The wire contract: frame types, error codes, close codes, and the checks on names and positions.

Frames the relay sends are JSON objects with a ``type``:

==============  =========================================================================
``subscribed``  first frame to every consumer: ``channel``, ``id`` (delivery goes on after it);
                for a group member ``channel`` and ``group``
``message``     ``id``, ``channel``, ``data`` (the producer's JSON, verbatim); to a group
                member also ``delivery`` (1 the first time, more when delivered again)
``gap``         ``from``, ``next``: messages after ``from`` and before ``next`` are gone
``ack``         to a producer: ``id`` of the stored entry (and from a group member: ``id`` done)
``error``       ``code``, ``detail``: the frame it answers was not stored / not accepted
==============  =========================================================================

Close codes follow RFC 6455 (1000-2999) and the IANA registry (1012); 4000-4999 are the
relay's own: 4401 (the token expired, mirroring HTTP 401).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Final

import orjson

from app import streamid
from app.errors import InvalidChannel, InvalidPosition, InvalidRequest
from app.streamid import StreamId

CHANNEL_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_CHANNEL = re.compile(CHANNEL_PATTERN[1:-1])
DEFAULT_CHANNEL: Final = "default"
MAX_PREFETCH: Final = 1000


class Close(IntEnum):
    """WebSocket close codes the relay sends."""

    NORMAL = 1000
    GOING_AWAY = 1001  # the instance is stopping
    POLICY = 1008  # refused: bad channel, bad position, bad token
    TOO_BIG = 1009  # a frame larger than RELAY_MAX_MESSAGE_BYTES
    INTERNAL = 1011
    RESTART = 1012  # the instance is draining: reconnect (elsewhere) and resume with ``from``
    TOKEN_EXPIRED = 4401  # the token's exp passed: reconnect with a new token (and ``from``)


class ErrorCode(StrEnum):
    """``code`` of an ``error`` frame (and of an HTTP error body)."""

    INVALID_JSON = "invalid_json"  # the frame is not one JSON value
    BINARY_FRAME = "binary_frame"  # producers send text frames
    TOO_LARGE = "too_large"  # HTTP body over RELAY_MAX_MESSAGE_BYTES
    INVALID_CHANNEL = "invalid_channel"
    INVALID_ID = "invalid_id"
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_CHANNEL = "unknown_channel"
    UNEXPECTED_FRAME = "unexpected_frame"  # a fan-out consumer sent something
    UNAVAILABLE = "unavailable"  # Redis unreachable, or the instance is draining
    STORAGE_ERROR = "storage_error"  # Redis refused the write (e.g. the key is not a stream)
    RATE_LIMITED = "rate_limited"  # over RELAY_PUBLISH_RATE: not stored
    UNAUTHORIZED = "unauthorized"  # no valid token (HTTP 401)
    FORBIDDEN = "forbidden"  # the token does not cover the channel, or the origin is not allowed (403)
    UNKNOWN_ID = "unknown_id"  # a group member acked an id it does not hold


@dataclass(frozen=True, slots=True)
class Position:
    """Where a consumer starts: after ``after``; ``latest`` means after whatever is last now."""

    after: StreamId
    latest: bool = False
    report_gap: bool = True  # ``from=0`` asks for what is retained: no gap to report

    @property
    def text(self) -> str:
        return "$" if self.latest else streamid.format_id(self.after)


LATEST: Final = Position(streamid.ZERO, latest=True)
ORIGIN: Final = Position(streamid.ZERO, report_gap=False)


def check_channel(name: str) -> str:
    if _CHANNEL.fullmatch(name) is None:
        raise InvalidChannel(f"invalid channel name {name[:140]!r}: expected {CHANNEL_PATTERN}")
    return name


def check_group(name: str) -> str:
    """Group names follow the channel-name rule."""
    if _CHANNEL.fullmatch(name) is None:
        raise InvalidRequest(f"invalid group name {name[:140]!r}: expected {CHANNEL_PATTERN}")
    return name


def parse_prefetch(text: str | None, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= MAX_PREFETCH:
        raise InvalidRequest(
            f"invalid prefetch {text[:20]!r}: expected a whole number from 1 to {MAX_PREFETCH}"
        )
    return int(text)


def parse_position(text: str | None) -> Position:
    """``from`` as a consumer or a history request gives it."""
    if text is None or text == "$":
        return LATEST
    if text == "0":
        return ORIGIN
    sid = streamid.validate(text)
    if sid is None:
        raise InvalidPosition(
            f"invalid from {text[:60]!r}: expected '$', '0' or an entry id such as 1732540000000-0"
        )
    return Position(sid)


def subscribed_frame(channel: str, position: str) -> str:
    return f'{{"type":"subscribed","channel":"{channel}","id":"{position}"}}'


def message_frame(entry_id: str, channel: str, data: str) -> str:
    """A message as consumers see it; ``data`` is JSON text already validated on the way in."""
    return f'{{"type":"message","id":"{entry_id}","channel":"{channel}","data":{data}}}'


def group_subscribed_frame(channel: str, group: str) -> str:
    return f'{{"type":"subscribed","channel":"{channel}","group":"{group}"}}'


def group_message_frame(entry_id: str, channel: str, data: str, delivery: int) -> str:
    return f'{{"type":"message","id":"{entry_id}","channel":"{channel}","data":{data},"delivery":{delivery}}}'


def gap_frame(after: str, next_id: str) -> str:
    return f'{{"type":"gap","from":"{after}","next":"{next_id}"}}'


def ack_frame(entry_id: str) -> str:
    return f'{{"type":"ack","id":"{entry_id}"}}'


def error_body(code: ErrorCode, detail: str) -> bytes:
    return orjson.dumps({"type": "error", "code": code, "detail": detail})


def error_frame(code: ErrorCode, detail: str) -> str:
    return error_body(code, detail).decode()
