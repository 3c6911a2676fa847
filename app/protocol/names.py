"""What a client names: channels, groups, positions (``from``) and ``prefetch``, and their checks.

A check raises a :class:`app.errors.ProtocolError` whose ``code`` is the error code the client
sees, with a detail that says what was expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from app.errors import InvalidChannel, InvalidPosition, InvalidRequest
from app.protocol import streamid
from app.protocol.streamid import StreamId

CHANNEL_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_CHANNEL = re.compile(CHANNEL_PATTERN[1:-1])
DEFAULT_CHANNEL: Final = "default"
MAX_PREFETCH: Final = 1000


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
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_PREFETCH:
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
