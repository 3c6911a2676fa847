"""What a message must pass before it is sent to Redis, whichever way it was published."""

from __future__ import annotations

import re
import time
from typing import Any, Final

import orjson

from app.protocol.frames import MAX_DEPTH

_IDEMPOTENCY_KEY: Final = re.compile(r"[\x21-\x7e]{1,200}")
IDEMPOTENCY_KEY_RULE: Final = "expected 1-200 visible ASCII characters"

JSON_RULE: Final = f"expected one JSON value nested at most {MAX_DEPTH} deep"
_ORJSON_DEPTH: Final = 1024  # orjson.loads refuses deeper documents (its documentation; tests pin it)
_PAD: Final = _ORJSON_DEPTH - MAX_DEPTH
_PAD_OPEN: Final = "[" * _PAD
_PAD_CLOSE: Final = "]" * _PAD
_SHALLOW: Final = 2 * MAX_DEPTH + 1  # nesting deeper than MAX_DEPTH takes more characters than this
_LONG: Final = 16 * 1024  # from here on, the brackets are looked for, not counted


def utf8_length_exceeds(text: str, limit: int) -> bool:
    """Whether ``text`` is longer than ``limit`` bytes in UTF-8, encoding only when it matters."""
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode()) > limit


def json_refusal(text: str) -> str | None:
    """Why ``text`` cannot be a message, or None: it must be exactly one JSON value nested at most
    :data:`~app.protocol.frames.MAX_DEPTH` deep.

    Nesting deeper takes more than ``2 * MAX_DEPTH + 1`` characters and more than ``MAX_DEPTH``
    opening brackets, so an ordinary message is cleared by its length (or by its brackets) and
    parsed once, as before. A text with that many brackets is parsed inside ``1024 - MAX_DEPTH``
    arrays instead, and orjson's own limit of 1024 levels does the counting, in C.
    """
    if len(text) <= _SHALLOW or not _many_brackets(text):
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return f"{JSON_RULE}: {exc}"
        return None
    try:
        if _one_value_inside(orjson.loads(_PAD_OPEN + text + _PAD_CLOSE)):
            return None
    except orjson.JSONDecodeError:
        pass
    try:  # refused: say why, not JSON (and where) or too deep
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return f"{JSON_RULE}: {exc}"
    return f"{JSON_RULE}: it nests deeper"


def _many_brackets(text: str) -> bool:
    """Whether ``text`` holds more than ``MAX_DEPTH`` opening brackets (in strings or not)."""
    if len(text) < _LONG:  # two counts: about 0.6 ns a character
        return text.count("[") + text.count("{") > MAX_DEPTH
    find, seen = text.find, 0  # a long text is mostly strings: skip from bracket to bracket (memchr)
    for bracket in "[{":
        at = find(bracket)
        while at >= 0:
            seen += 1
            if seen > MAX_DEPTH:
                return True
            at = find(bracket, at + 1)
    return False


def _one_value_inside(padded: Any) -> bool:
    """Whether each array of the padding holds exactly one value: ``1],[2``, which is no JSON
    value, parses once padded too, but leaves two values in one of the padding's arrays."""
    for _ in range(_PAD):
        if len(padded) != 1:
            return False
        (padded,) = padded
    return True


def valid_idempotency_key(key: str) -> bool:
    """An idempotency key is 1-200 visible ASCII characters (it becomes part of a Redis key)."""
    return _IDEMPOTENCY_KEY.fullmatch(key) is not None


class RateLimit:
    """A token bucket: ``rate`` per second on average, ``burst`` at once."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()

    def take(self) -> bool:
        """One message may go now (and is counted), or not."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def delay(self) -> float:
        """Seconds until the next message may go."""
        return max(0.0, (1 - self._tokens) / self._rate)
