"""What every connection that publishes shares (``/ws/producer/C`` and ``/ws``): when it may read.

A publishing connection reads its next frame only when the rate allows it, fewer than
``RELAY_PRODUCER_WINDOW`` of its replies wait to be sent, and the instance's publisher has room
for Redis; otherwise uvicorn stops reading its socket and TCP pushes back on the client, instead of
the relay buffering. A frame over ``RELAY_PUBLISH_RATE`` is answered ``rate_limited`` (not stored,
not counted by the flood rule), and reading pauses until the next one may go.
"""

from __future__ import annotations

import asyncio
import time

from starlette.websockets import WebSocket

from app import metrics
from app.ingest.checks import RateLimit
from app.ingest.publisher import Publisher
from app.protocol import frames
from app.protocol.codes import ErrorCode
from app.server.connection import Connection
from app.settings import Settings


class PublishingConnection(Connection):
    __slots__ = ("_limit", "_publisher", "_resume_at", "_window")

    def __init__(
        self,
        websocket: WebSocket,
        channel: str,
        publisher: Publisher,
        settings: Settings,
        *,
        expires: float | None = None,
    ) -> None:
        super().__init__(websocket, channel, expires=expires)
        self._publisher = publisher
        self._window = settings.producer_window
        self._limit = (
            RateLimit(settings.publish_rate, settings.publish_burst) if settings.publish_rate else None
        )
        # when reading may go on after a frame over the rate (time.monotonic(), as the loop's
        # clock): a time, not a delay, as frames taken on arrival meet it only with the next one
        self._resume_at = 0.0

    def reading_held(self) -> bool:
        """Read no further while the rate says wait, the window is full, or Redis is behind."""
        return self._rate_holds() or self.queued_replies >= self._window or self._publisher.full

    def _rate_holds(self) -> bool:
        """A frame over the rate was answered and its pause has not passed (forgotten once it has)."""
        if self._resume_at == 0.0:
            return False
        if self._resume_at > time.monotonic():
            return True
        self._resume_at = 0.0
        return False

    async def ready_to_read(self) -> None:
        if self._resume_at != 0.0 and (wait := self._resume_at - time.monotonic()) > 0:
            self._resume_at = 0.0
            await asyncio.sleep(wait)
        elif self.queued_replies >= self._window:
            await self.wait_for_reply_room(self._window)
        elif self._publisher.full:
            await self._publisher.wait_for_room()  # all producers together wait for Redis

    def over_rate(self, channel: str | None = None, ref: frames.Ref = "") -> bool:
        """Whether this message is over the rate: then it is answered, and reading pauses."""
        if self._limit is None or self._limit.take():
            return False
        metrics.RATE_LIMITED.inc()
        self.report(ErrorCode.RATE_LIMITED, "over RELAY_PUBLISH_RATE: not stored; slow down", channel, ref)
        self._resume_at = time.monotonic() + self._limit.delay()  # no faster than allowed: backpressure
        return True
