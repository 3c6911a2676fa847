"""``WS /ws/producer/{channel}``: producers.

Every text frame is one JSON message and gets exactly one reply, in frame order: an ``ack`` once
Redis has the entry, or an ``error``. The reader hands each frame to the publisher and queues a
reply that settles when the publish does; the handler sends the replies in order, those settled
together in one write. A producer may keep up to ``RELAY_PRODUCER_WINDOW`` frames unanswered;
beyond that, while the instance has more waiting for Redis than it keeps, and after a frame over
its rate, the relay stops reading its socket (TCP backpressure) instead of buffering. Frames that
are no message (not JSON, nested too deep, binary) count toward the flood rule: the 33rd within
10 s closes the connection with 1008, once every frame before it has its reply.
"""

from __future__ import annotations

import asyncio

from starlette.types import Message
from starlette.websockets import WebSocket

from app import metrics
from app.errors import StorageError
from app.ingest.checks import json_refusal, utf8_length_exceeds
from app.ingest.publisher import Publisher, Receipt
from app.protocol import frames
from app.protocol.codes import Close, ErrorCode
from app.server.publishing import PublishingConnection
from app.server.routes.common import DRAINING_DETAIL, admit, relay_of
from app.settings import Settings


async def serve(websocket: WebSocket, channel: str) -> None:
    """``WS /ws/producer/{channel}`` (dispatched by :mod:`app.server.sockets`)."""
    admission = await admit(websocket, channel, publish=True)
    if admission is None:
        return
    relay = relay_of(websocket)
    connection = ProducerConnection(
        websocket, channel, relay.publisher, relay.settings, expires=admission.grant.expires
    )
    relay.track(connection)
    try:
        await connection.run()
    finally:
        relay.untrack(connection)


class ProducerConnection(PublishingConnection):
    role = "producer"
    reads_on_arrival = False  # producers are busy: without a wire, one reader loop, no task per arrival
    takes_at_once = True  # on a wire: each frame where it arrives, no task at all
    replies_at_once = True  # each ack sent as the publish settles, without waking the writer

    __slots__ = (
        "_idle",
        "_idle_timeout",
        "_last_frame",
        "_loop",
        "_max_bytes",
        "_render",
    )

    def __init__(
        self,
        websocket: WebSocket,
        channel: str,
        publisher: Publisher,
        settings: Settings,
        *,
        expires: float | None = None,
    ) -> None:
        super().__init__(websocket, channel, publisher, settings, expires=expires)
        self._max_bytes = settings.max_message_bytes
        self._idle_timeout = settings.producer_idle_timeout or None
        self._loop = asyncio.get_running_loop()
        self._last_frame = self._loop.time()
        self._idle: asyncio.TimerHandle | None = None
        self._render = self._settled  # bound once: one reply per frame

    def on_frame(self, message: Message) -> None:
        self._last_frame = self._loop.time()
        text = message.get("text")
        if self._closing:
            self.report(ErrorCode.UNAVAILABLE, DRAINING_DETAIL)
        elif text is None:
            self.refuse(ErrorCode.BINARY_FRAME, "expected a text frame holding JSON, got binary")
        elif utf8_length_exceeds(text, self._max_bytes):
            metrics.ERRORS.labels(ErrorCode.TOO_LARGE).inc()
            self.request_close(Close.TOO_BIG, f"frame over RELAY_MAX_MESSAGE_BYTES ({self._max_bytes})")
        elif self._limit is None or not self.over_rate():  # the check inline: a frame each
            self._publish(text)

    def _publish(self, text: str) -> None:
        refusal = json_refusal(text)
        if refusal is not None:
            self.refuse(ErrorCode.INVALID_JSON, refusal)
            return
        self.reply_later(self._publisher.submit(self.channel, text), self._render)

    def _settled(self, receipt: asyncio.Future[Receipt]) -> str:
        try:
            return frames.ack(receipt.result()[0])
        except StorageError as exc:
            return self.error_text(ErrorCode.STORAGE_ERROR, f"not stored: {exc}")
        except (Exception, asyncio.CancelledError) as exc:  # BrokerUnavailable, or the publish cancelled
            return self.error_text(
                ErrorCode.UNAVAILABLE, f"not stored: {str(exc) or 'the publish was cancelled'}"
            )

    async def write(self) -> None:
        """Send every reply, in order; on a close request, only once each frame read has its reply."""
        while not self.gone:
            await self.send_replies()
            if self.has_replies:
                await self.wait_for_first_reply()
            elif self.closing:
                return
            else:
                await self.wake.wait()

    def opened(self) -> None:
        self._watch_idle()

    def finish(self) -> None:
        if self._idle is not None:
            self._idle.cancel()

    def _watch_idle(self) -> None:
        """Close a producer that sent nothing for the idle timeout (a timer, not a per-frame cost)."""
        timeout = self._idle_timeout
        if timeout is None:
            return
        quiet = self._loop.time() - self._last_frame
        if quiet >= timeout:
            metrics.IDLE_CLOSES.inc()
            self.request_close(Close.NORMAL, f"idle for {timeout:g}s (RELAY_PRODUCER_IDLE_TIMEOUT)")
            return
        self._idle = self._loop.call_later(timeout - quiet, self._watch_idle)
