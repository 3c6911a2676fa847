"""Delays between the tries of a retry loop: exponential, capped, jittered, reset after a success.

Every loop that retries by itself waits through one of these: the Pub/Sub supervisor, a topic
filling a hole, a consumer catching up, a group reader, the worker runner joining its group, the
client reconnecting or posting again. The delay after the ``n``-th failure in a row is drawn
uniformly from ``[0, base * 2**n]`` and is at most ``cap`` (redis-py's
``ExponentialWithJitterBackoff``), so instances that lost Redis together do not come back in step. Single Redis commands are retried
by redis-py's own ``Retry`` (``app.broker.clients``), the first of the two layers.
"""

from __future__ import annotations

import asyncio
from typing import Final

from redis.backoff import ExponentialWithJitterBackoff

BASE: Final = 0.1
CAP: Final = 5.0


class Backoff:
    __slots__ = ("_policy", "failures")

    def __init__(self, base: float = BASE, cap: float = CAP) -> None:
        self._policy = ExponentialWithJitterBackoff(base=base, cap=cap)
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before the next try."""
        self.failures += 1
        return float(self._policy.compute(self.failures))

    def reset(self) -> None:
        """A try succeeded: the next failure waits the shortest again."""
        self.failures = 0

    async def wait(self) -> None:
        """Count a failure and wait before the next try."""
        await asyncio.sleep(self.failed())
