"""``GET /channels/{channel}/events``: a consumer as Server-Sent Events (``text/event-stream``).

The same delivery as ``WS /ws/consumer/{channel}``, for clients that cannot speak WebSocket
(``curl -N``, ``EventSource``): the same hub subscription, the same frames (each message's event is
made once, for every stream, :attr:`app.fanout.sink.Frame.event`), parked on the transport while
idle (:mod:`app.server.stream`). A ``Last-Event-ID`` header takes the place of ``from``: it is what
an EventSource sends when it reconnects. Event layout: :mod:`app.protocol.events`.

A stream ends when the client leaves, the instance drains, or the token's ``exp`` passes; a client
whose socket takes no data at two ping ticks in a row is cut off (its subscription had already fallen behind,
so it never held more than its buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app import metrics
from app.backoff import Backoff
from app.errors import BrokerError, ProtocolError
from app.fanout.subscription import Subscription
from app.logs import ConnectionLog, peer_of
from app.protocol import events, names, streamid
from app.protocol.codes import ErrorCode
from app.protocol.names import Position
from app.server.auth import AuthError
from app.server.lifecycle import Relay
from app.server.routes.common import (
    DRAINING_DETAIL,
    auth_response,
    authorize,
    error_response,
    origin_allowed,
    relay_of,
)
from app.server.stream import Gone, Stream, stream_of
from app.wakeup import Wakeup

log = logging.getLogger("relay.events")

ROLE: Final = "events"
RETRY_MS: Final = 1000
"""How long an EventSource waits before it reconnects after a stream ended (``retry:``)."""
TOKEN_EXPIRED: Final = "token expired: reconnect with a new token"
_PREFIX: Final = "/channels/"
_SUFFIX: Final = "/events"


def match(scope: Scope) -> str | None:
    """The channel of a ``GET /channels/{channel}/events`` request (without the root path), or None.

    Streams are served ahead of FastAPI (:class:`app.server.app.RelayApp`), as WebSockets are: a
    stream lives for hours, and FastAPI's routing, middleware and exit-stack frames kept alive
    under it were a third of its memory."""
    if scope["method"] != "GET":
        return None
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    if len(path) > len(_PREFIX) + len(_SUFFIX) and path.startswith(_PREFIX) and path.endswith(_SUFFIX):
        # slashes and dot segments included: the channel rule refuses them with 400
        return path[len(_PREFIX) : -len(_SUFFIX)]
    return None


async def serve(scope: Scope, receive: Receive, send: Send, channel: str) -> None:
    """Follow a channel as Server-Sent Events: ``subscribed``, then ``message`` and ``gap`` events."""
    await admit(Request(scope, receive), channel)(scope, receive, send)


def admit(request: Request, channel: str) -> ASGIApp:
    """The stream, or the response that refuses it (before anything is streamed)."""
    relay = relay_of(request)
    resume = request.headers.get("last-event-id") or None  # EventSource sends it on reconnect
    try:
        names.check_channel(channel)
        position = names.parse_position(resume if resume is not None else request.query_params.get("from"))
        grant = authorize(request, relay, channel, publish=False)
    except ProtocolError as exc:
        return error_response(400, exc.code, exc.detail)
    except AuthError as exc:
        return auth_response(exc)
    origin = request.headers.get("origin")
    if not origin_allowed(relay, origin):
        assert origin is not None
        return error_response(403, ErrorCode.FORBIDDEN, f"origin {origin[:100]!r} is not allowed")
    # no list of origins: anyone may read (tokens go in the URL, not in cookies); else the one asked
    cors = (origin or "*") if relay.settings.allowed_origins else "*"
    event_source = "text/event-stream" in request.headers.get("accept", "")
    if relay.draining:
        return unavailable(DRAINING_DETAIL, cors, event_source)
    if relay.open_connections >= relay.settings.max_connections:
        metrics.REFUSED_FULL.inc()
        return unavailable("this instance is full; connect to another one", cors, event_source)
    return EventStream(relay, channel, position, grant.expires, cors, peer_of(request.client), event_source)


def unavailable(detail: str, cors: str, event_source: bool) -> Response:
    """A refusal that will pass (a drain, a full instance, Redis away): 503, except to a client
    that asks for an event stream (an EventSource gives up for good on any answer but 200), which
    gets an empty stream telling it to come back in a second; the balancer then sends it elsewhere."""
    if not event_source:
        return error_response(503, ErrorCode.UNAVAILABLE, detail, {"Retry-After": "1"})
    comment = " ".join(detail.split())[:200]
    body = events.retry(RETRY_MS) + f": unavailable: {comment}\n\n".encode()
    headers = {"Cache-Control": "no-cache", "Access-Control-Allow-Origin": cors}
    return Response(body, media_type="text/event-stream", headers=headers)


class EventStream:
    """One stream: an ASGI response that lives as long as the subscription it serves."""

    def __init__(
        self,
        relay: Relay,
        channel: str,
        position: Position,
        expires: float | None,
        cors: str,
        peer: str,
        event_source: bool,
    ) -> None:
        self._relay = relay
        self.channel = channel
        self._position = position
        self._expires = expires
        self._cors = cors
        self._peer = peer
        self._wake = Wakeup()  # the writer waits on it: something to send, a ping due, the end
        self._closing: str | None = None  # why the relay ends the stream
        self._gone = False  # the client left (or was cut off)
        self._ping_due = False
        self._progress = False  # something was written since the last tick
        self._stalled = 0  # ticks in a row that found the client reading nothing
        self._resumes = 0  # the transport's resumes at the last tick
        self._timers: list[asyncio.TimerHandle] = []
        self._event_source = event_source  # it asked for text/event-stream (an EventSource does)

    def request_close(self, code: int, reason: str) -> None:
        """End the stream (drain, token expiry); the client reconnects with ``Last-Event-ID``."""
        if self._closing is None:
            self._closing = reason
            self._wake.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self._relay
        relay.track(self)
        try:
            try:
                sub = await relay.hub.subscribe(self.channel, self._position, self._wake)
            except BrokerError as exc:
                refusal = unavailable(f"cannot follow the channel now: {exc}", self._cors, self._event_source)
                await refusal(scope, receive, send)
                return
            await self._serve(sub, scope, receive, send)
        finally:
            relay.untrack(self)

    async def _serve(self, sub: Subscription, scope: Scope, receive: Receive, send: Send) -> None:
        out = stream_of(scope, receive, send)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self._event_headers()})
        except BaseException:
            self._relay.hub.unsubscribe(sub)
            raise
        out.watch(self._left)
        self._start_timers(out)
        metrics.CONNECTIONS.labels(ROLE).inc()
        connection_log = ConnectionLog(ROLE, self.channel, self._peer)
        try:
            position = streamid.format_id(sub.last) if self._position.latest else self._position.text
            await out.send_raw(events.retry(RETRY_MS) + events.subscribed(self.channel, position))
            await self._write(sub, out)
        except Gone:
            self._gone = True
        finally:
            metrics.CONNECTIONS.labels(ROLE).dec()
            for timer in self._timers:
                timer.cancel()
            # off the fan-out before the body ends: a parked subscription would write events after it
            self._relay.hub.unsubscribe(sub)
            await out.unwatch()
            await self._end(send, out)
            connection_log.closed(None, self._closing or "", "client" if self._gone else "relay")

    def _event_headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache, no-transform"),
            (b"x-accel-buffering", b"no"),  # nginx and the like: pass each event on at once
            (b"access-control-allow-origin", self._cors.encode("latin-1", "replace")),
        ]
        if self._cors != "*":
            headers.append((b"vary", b"origin"))
        return headers

    def _start_timers(self, out: Stream) -> None:
        loop = asyncio.get_running_loop()
        interval = self._relay.settings.sse_ping_interval
        self._timers.append(loop.call_later(interval, self._tick, out, interval))
        if self._expires is not None:
            delay = max(0.0, self._expires - time.time())
            self._timers.append(loop.call_later(delay, self.request_close, 0, TOKEN_EXPIRED))

    async def _write(self, sub: Subscription, out: Stream) -> None:
        """The subscription's events, in order, until the stream ends (as a WebSocket consumer's)."""
        backoff: Backoff | None = None  # made on the first failure
        while self._closing is None and not self._gone:
            if self._ping_due:
                self._ping_due = False
                await out.send_raw(events.PING)
                self._progress = True
            try:
                batch = await sub.take()
            except BrokerError as exc:  # Redis is away: keep the stream, try again
                backoff = backoff or Backoff()
                log.warning("catch-up read on %r failed (%s); retrying", sub.channel, exc)
                with contextlib.suppress(TimeoutError):  # the end, or a ping, cuts the pause short
                    await asyncio.wait_for(self._wake.wait(), backoff.failed())
                continue
            if backoff is not None:
                backoff.reset()
            if not batch:
                if out.direct:
                    sub.park(out)  # live events go straight to the transport meanwhile
                await self._wake.wait()
                continue
            await out.send(batch)
            self._progress = True
            metrics.DELIVERED.inc(len(batch))
            await asyncio.sleep(0)  # a catch-up page must not hold the loop (see consumer.py)

    def _tick(self, out: Stream, interval: float) -> None:
        """Every ping interval: a ping for a client that reads; one whose transport took no data
        at two ticks in a row, with nothing written and no resume in between, is cut off."""
        resumes = out.resumes
        if out.writable or self._progress or resumes != self._resumes:
            self._resumes = resumes
            self._stalled = 0
            self._ping_due = True
            self._wake.set()
        else:
            self._stalled += 1
            if self._stalled >= 2:
                self._closing = f"the client read nothing for {2 * interval:g}s: cut off"
                self._gone = True
                out.abort()
                self._wake.set()
                return
        self._progress = False
        self._timers[0] = asyncio.get_running_loop().call_later(interval, self._tick, out, interval)

    def _left(self) -> None:
        """The client went away."""
        self._gone = True
        self._wake.set()

    async def _end(self, send: Send, out: Stream) -> None:
        """The body's end, unless the client is gone; a client that does not take it within
        ``RELAY_WS_PING_TIMEOUT`` is cut off."""
        if self._gone:
            return
        try:
            await asyncio.wait_for(
                send({"type": "http.response.body", "body": b"", "more_body": False}),
                self._relay.settings.ws_ping_timeout,
            )
        except TimeoutError:
            out.abort()
