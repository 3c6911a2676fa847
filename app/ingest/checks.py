"""What a message must pass before it is sent to Redis, whichever way it was published."""

from __future__ import annotations

import re
import time
from typing import Final

_IDEMPOTENCY_KEY: Final = re.compile(r"[\x21-\x7e]{1,200}")
IDEMPOTENCY_KEY_RULE: Final = "expected 1-200 visible ASCII characters"


def utf8_length_exceeds(text: str, limit: int) -> bool:
    """Whether ``text`` is longer than ``limit`` bytes in UTF-8, encoding only when it matters."""
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode()) > limit


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
