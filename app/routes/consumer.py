"""``WS /ws/consumer/{channel}``: fan-out consumers.

The handler writes the subscription's frames, in order (what the client sends only earns error
answers: consumers have nothing to say). The fan-out never waits for it: when the handler has
nothing to send it parks the subscription on the wire, and live messages are written by the
fan-out itself (:mod:`app.wire`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import WebSocket
from redis.backoff import ExponentialWithJitterBackoff

from app import metrics, protocol, streamid
from app.errors import BrokerError
from app.protocol import ErrorCode
from app.routes.common import admit, refuse, relay_of
from app.routes.connection import Connection
from app.routes.members import serve_member
from app.subscription import Subscription
from app.wire import send_frames, wire_of

log = logging.getLogger("relay.consumer")


async def serve(websocket: WebSocket, channel: str) -> None:
    """``WS /ws/consumer/{channel}?from=&group=&prefetch=`` (dispatched by :mod:`app.routes.sockets`)."""
    admission = await admit(websocket, channel, websocket.query_params.get("from"))
    if admission is None:
        return
    relay = relay_of(websocket)
    if "group" in websocket.query_params:
        await serve_member(websocket, relay, channel, admission)
        return
    position = admission.position
    connection = ConsumerConnection(websocket, channel, expires=admission.grant.expires)
    with relay.connection(connection):  # counted from here: the limit holds while Redis answers
        try:
            sub = await relay.hub.subscribe(channel, position, connection.wake.set)
        except BrokerError as exc:
            await refuse(websocket, 503, ErrorCode.UNAVAILABLE, f"cannot follow the channel now: {exc}")
            return
        try:
            await connection.run(sub, position)
        finally:
            relay.hub.unsubscribe(sub)


class ConsumerConnection(Connection):
    role = "consumer"

    def __init__(self, websocket: WebSocket, channel: str, *, expires: float | None) -> None:
        super().__init__(websocket, channel, expires=expires)
        self._sub: Subscription | None = None

    async def run(self, sub: Subscription, position: protocol.Position) -> None:
        self._sub = sub
        subscribed_id = streamid.format_id(sub.last) if position.latest else position.text
        await self.serve(protocol.subscribed_frame(sub.channel, subscribed_id))

    async def write(self) -> None:
        sub = self._sub
        assert sub is not None
        websocket = self.websocket
        wire = wire_of(websocket)
        backoff = ExponentialWithJitterBackoff(base=0.1, cap=5.0)
        failures = 0
        while not self.closing:
            await self.send_answers()
            try:
                batch = await sub.take()
            except BrokerError as exc:  # Redis is away: stay connected, try again
                failures += 1
                log.warning("catch-up read on %r failed (%s); retrying", sub.channel, exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.compute(failures)):
                        await self.wait_closing()  # a close request cuts the pause short
                continue
            failures = 0
            if not batch:
                if wire is not None and not self.has_answers:
                    sub.park(wire)
                await self.wake.wait()
                continue
            await send_frames(websocket, wire, batch)
            metrics.DELIVERED.inc(len(batch))
            # a shared page is there at once and the socket's kernel buffer takes it whole, so
            # nothing above waited: give the loop back, or one catch-up would hold it to the end
            # and every live delivery on the instance with it
            await asyncio.sleep(0)

    def on_frame(self, message: Any) -> None:
        """Consumers have nothing to say in fan-out mode."""
        self.answer(ErrorCode.UNEXPECTED_FRAME, "consumers send no frames in fan-out mode")
