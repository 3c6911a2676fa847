"""``WS /ws/consumer/{channel}``: fan-out consumers.

The handler writes the subscription's frames, in order (what the client sends only earns error
answers: consumers have nothing to say). The fan-out never waits for it: when the handler has
nothing to send it parks the subscription on the wire, and live messages are written by the
fan-out itself (:mod:`app.fanout.subscription`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from starlette.types import Message
from starlette.websockets import WebSocket

from app import metrics
from app.backoff import Backoff
from app.errors import BrokerError
from app.fanout.subscription import Subscription
from app.protocol import frames, streamid
from app.protocol.codes import ErrorCode
from app.protocol.names import Position
from app.server.connection import Connection
from app.server.routes.common import admit, deny, relay_of
from app.server.routes.members import serve_member

log = logging.getLogger("relay.consumer")


async def serve(websocket: WebSocket, channel: str) -> None:
    """``WS /ws/consumer/{channel}?from=&group=&prefetch=`` (dispatched by :mod:`app.server.sockets`)."""
    admission = await admit(websocket, channel, websocket.query_params.get("from"))
    if admission is None:
        return
    relay = relay_of(websocket)
    if "group" in websocket.query_params:
        await serve_member(websocket, relay, channel, admission)
        return
    position = admission.position
    connection = ConsumerConnection(websocket, channel, expires=admission.grant.expires)
    relay.track(connection)  # counted from here: the limit holds while Redis answers
    try:
        try:
            # the wake-up itself, not its bound set(): that would be 64 bytes more per consumer
            sub = await relay.hub.subscribe(channel, position, connection.wake)
        except BrokerError as exc:
            await deny(websocket, 503, ErrorCode.UNAVAILABLE, f"cannot follow the channel now: {exc}")
            return
        try:
            await connection.follow(sub, position)
        finally:
            relay.hub.unsubscribe(sub)
    finally:
        relay.untrack(connection)


class ConsumerConnection(Connection):
    role = "consumer"

    __slots__ = ("_sub",)

    def __init__(self, websocket: WebSocket, channel: str, *, expires: float | None) -> None:
        super().__init__(websocket, channel, expires=expires)
        self._sub: Subscription | None = None

    def follow(self, sub: Subscription, position: Position) -> Coroutine[Any, Any, None]:
        """Serve the subscription until the connection closes (await it). A plain function that
        hands back ``run``'s coroutine: a frame of its own would stay alive as long as the
        connection, 0.25 KB each."""
        self._sub = sub
        subscribed_id = streamid.format_id(sub.last) if position.latest else position.text
        return self.run(frames.subscribed(sub.channel, subscribed_id))

    async def write(self) -> None:
        sub = self._sub
        assert sub is not None
        out = self.out
        backoff: Backoff | None = None  # made on the first failure: thousands of consumers sit idle
        while not self.closing:
            await self.send_replies()
            try:
                batch = await sub.take()
            except BrokerError as exc:  # Redis is away: stay connected, try again
                backoff = backoff or Backoff()
                log.warning("catch-up read on %r failed (%s); retrying", sub.channel, exc)
                await self.pause(backoff.failed())  # a close request cuts the pause short
                continue
            if backoff is not None:
                backoff.reset()
            if not batch:
                if out.direct and not self.has_replies:
                    sub.park(out)
                await self.wake.wait()
                continue
            await out.send(batch)
            metrics.DELIVERED.inc(len(batch))
            # a shared page is there at once and the socket's kernel buffer takes it whole, so
            # nothing above waited: give the loop back, or one catch-up would hold it to the end
            # and every live delivery on the instance with it
            await asyncio.sleep(0)

    def on_frame(self, message: Message) -> None:
        """Consumers have nothing to say in fan-out mode."""
        self.refuse(ErrorCode.UNEXPECTED_FRAME, "consumers send no frames in fan-out mode")
