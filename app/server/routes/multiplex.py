"""``WS /ws``: one connection, many channels, with presence (``docs/protocol.md``).

The client's frames (``subscribe``, ``unsubscribe``, ``publish``, ``presence``, ``refresh``) each
get exactly one reply, in frame order, repeating the frame's ``ref``; a refusal is an ``error``
and the connection stays open (the flood rule still closes it). Each subscription is a hub
:class:`~app.fanout.subscription.Subscription`, as a ``/ws/consumer/C`` connection's is: the same
frames, built once for both, and the same guarantees.

The writer serves the subscriptions that have something to send in turn, one batch each (a
catch-up page or up to 64 live messages), so one catching up a long backlog holds the others'
live messages back by one batch at most. When none has anything it parks them on the wire, and
the fan-out writes their live messages itself. A subscription sends nothing before its
``subscribed`` reply went out, and nothing after its ``unsubscribed`` reply.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import orjson
from starlette.types import Message
from starlette.websockets import WebSocket

from app import metrics
from app.backoff import Backoff
from app.errors import BrokerError, ProtocolError, StorageError
from app.fanout.subscription import Subscription
from app.ingest.checks import (
    IDEMPOTENCY_KEY_RULE,
    JSON_RULE,
    json_refusal,
    utf8_length_exceeds,
    valid_idempotency_key,
)
from app.ingest.publisher import Receipt
from app.presence.tracker import entry_of
from app.protocol import frames, names, streamid
from app.protocol.codes import Close, ErrorCode
from app.protocol.names import Position
from app.server.auth import AuthError, Grant
from app.server.lifecycle import Relay
from app.server.publishing import PublishingConnection
from app.server.routes.common import auth_denial, relay_of, room_for

log = logging.getLogger("relay.multiplex")

ENVELOPE: Final = 4096
"""Bytes a ``publish`` frame may carry beyond its ``data`` (type, channel, key, ref): a frame
over ``RELAY_MAX_MESSAGE_BYTES`` plus this is no message at all, and closes with 1009."""
MAX_REF: Final = 256  # characters of a string ref
_INT_REF: Final = 2**53  # integers a JavaScript client can hold exactly
_SUB_BUFFER_SHARE: Final = 16  # a subscription holds RELAY_CONSUMER_BUFFER / this live messages
_MIN_SUB_BUFFER: Final = 64
# replies and presence frames unsent, in RELAY_PRODUCER_WINDOW: too slow beyond the first while
# the socket takes no data, and beyond the second whatever it does (a client that never reads
# them); a burst (a room's members joining at once) passes while the client keeps reading
_SLOW_REPLIES: Final = 4
_MAX_REPLIES: Final = 64
FRAME_TYPES: Final = "subscribe, unsubscribe, publish, presence, refresh or ping"


async def serve(websocket: WebSocket, channel: str) -> None:
    """``WS /ws`` (dispatched by :mod:`app.server.sockets`; ``channel`` is unused)."""
    relay = relay_of(websocket)
    try:
        grant = relay.auth.grant(websocket)
    except AuthError as exc:
        await auth_denial(websocket, exc)
        return
    if not await room_for(websocket, relay):
        return
    connection = MultiplexConnection(websocket, relay, grant)
    relay.track(connection)
    try:
        await connection.run(frames.connected(connection.client))
    finally:
        relay.untrack(connection)


class _Channel(Subscription):
    """One subscription of the connection, and the connection's state for it, in one object:
    pending until the hub has begun it (``attached``), live once its ``subscribed`` reply went
    out. It is its own wake-up (calling it asks the writer for a turn): no closure or bound method
    per subscription."""

    __slots__ = (
        "attached",
        "backoff",
        "connection",
        "idle",
        "live",
        "presence",
        "queued",
        "watcher",
    )

    def __init__(self, connection: MultiplexConnection, name: str, presence: bool) -> None:
        super().__init__(name, self)
        self.connection = connection
        self.presence = presence  # send the others' joins and leaves
        self.attached = False  # the hub delivers to it
        self.live = False
        self.queued = False  # in the writer's turn list
        self.idle = False  # in the list of those to park
        self.backoff: Backoff | None = None  # made when a catch-up read of it first fails
        self.watcher: Callable[[str, str], None] | None = None

    def __call__(self) -> None:
        """The subscription has something to send: give it a turn."""
        self.connection._enqueue(self)


class MultiplexConnection(PublishingConnection):
    role = "multiplexed"

    __slots__ = (
        "_buffer",
        "_channels",
        "_entry",
        "_grant",
        "_idle",
        "_max_frame",
        "_max_subscriptions",
        "_ready",
        "_relay",
        "_tasks",
        "client",
    )

    def __init__(self, websocket: WebSocket, relay: Relay, grant: Grant) -> None:
        self.client = relay.presence.client_id()
        settings = relay.settings
        super().__init__(websocket, self.client, relay.publisher, settings, expires=grant.expires)
        self._relay = relay
        self._grant = grant
        self._entry = entry_of(self.client, grant.user, grant.info)
        self._channels: dict[str, _Channel] = {}
        # made when first needed, and let go once empty again: thousands of sockets sit idle
        self._ready: deque[_Channel] | None = None  # subscriptions with something to send, in turn
        self._idle: list[_Channel] = []  # found with nothing to send: to park when the writer idles
        self._tasks: set[asyncio.Future[Any]] | None = None
        self._max_frame = settings.max_message_bytes + ENVELOPE
        self._max_subscriptions = settings.max_subscriptions
        self._buffer = max(_MIN_SUB_BUFFER, settings.consumer_buffer // _SUB_BUFFER_SHARE)

    # -- reading: one reply per frame (when to read: app.server.publishing) ----------------------

    def on_frame(self, message: Message) -> None:
        if self.closing:
            return  # the close frame on its way answers every frame from here on
        text = message.get("text")
        if text is None:
            self.refuse(ErrorCode.INVALID_FRAME, "expected a text frame holding a JSON object, got binary")
            return
        if utf8_length_exceeds(text, self._max_frame):
            metrics.ERRORS.labels(ErrorCode.TOO_LARGE).inc()
            self.request_close(Close.TOO_BIG, f"frame over RELAY_MAX_MESSAGE_BYTES + {ENVELOPE}")
            return
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self.refuse(ErrorCode.INVALID_FRAME, f"expected a JSON object: {exc}")
            return
        if not isinstance(frame, dict):
            self.refuse(ErrorCode.INVALID_FRAME, f"expected a JSON object, got {type(frame).__name__}")
            return
        ref = _ref_of(frame.get("ref"))
        kind = frame.get("type")
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if ref is None or handler is None:
            named = frame.get("channel")
            named = named[:140] if isinstance(named, str) else None  # said back, escaped
            if ref is None:
                detail = f"ref: expected a string of at most {MAX_REF} characters or an integer"
                self.refuse(ErrorCode.INVALID_FRAME, detail, named)
            else:
                detail = f"unknown type {str(kind)[:40]!r}: expected {FRAME_TYPES}"
                self.refuse(ErrorCode.INVALID_FRAME, detail, named, ref)
        else:
            handler(self, frame, ref)

    def _channel_of(self, frame: dict[str, Any], ref: str, action: str | None = None) -> str | None:
        """The frame's channel, checked, and allowed by the token for ``action`` (``subscribe``,
        ``publish``, or None: no check); None (refused) otherwise."""
        name = frame.get("channel")
        if not isinstance(name, str):
            self.refuse(ErrorCode.INVALID_FRAME, "channel: expected a channel name", ref=ref)
            return None
        try:
            names.check_channel(name)
        except ProtocolError as exc:
            self.refuse(ErrorCode.INVALID_CHANNEL, exc.detail, name[:140], ref)
            return None
        if action is None:
            return name
        grant = self._grant
        if not (grant.may_publish(name) if action == "publish" else grant.may_subscribe(name)):
            self.refuse(ErrorCode.FORBIDDEN, f"the token does not allow to {action} to {name!r}", name, ref)
            return None
        return name

    def _subscribe(self, frame: dict[str, Any], ref: str) -> None:
        name = self._channel_of(frame, ref, "subscribe")
        if name is None:
            return
        start, presence = frame.get("from"), frame.get("presence", False)
        if not (start is None or isinstance(start, str)) or not isinstance(presence, bool):
            self.refuse(
                ErrorCode.INVALID_FRAME, "from: expected a string; presence: expected a boolean", name, ref
            )
            return
        try:
            position = names.parse_position(start)
        except ProtocolError as exc:
            self.refuse(ErrorCode.INVALID_POSITION, exc.detail, name, ref)
            return
        if name in self._channels:
            self.refuse(ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {name!r}", name, ref)
            return
        if len(self._channels) >= self._max_subscriptions:
            detail = f"{self._max_subscriptions} subscriptions on this connection (RELAY_MAX_SUBSCRIPTIONS)"
            self.refuse(ErrorCode.TOO_MANY_SUBSCRIPTIONS, detail, name, ref)
            return
        name = self._relay.hub.shared_name(name)  # one string per followed channel, not one per frame
        state = self._channels[name] = _Channel(self, name, presence)
        # a future, not a task: no coroutine frames per subscribe while the position is read
        following: asyncio.Future[str] = self._track(asyncio.get_running_loop().create_future())
        self._relay.hub.attach_soon(
            state,
            position,
            lambda error: self._attached(state, position, following, error),
            limit=self._buffer,
        )
        self.reply_later(following, lambda done: self._subscribed(state, done, ref))

    def _attached(
        self, state: _Channel, position: Position, following: asyncio.Future[str], error: BrokerError | None
    ) -> None:
        """The hub began the subscription (``error`` None), or could not follow the channel."""
        if following.done():  # cancelled: the connection ended while it waited
            if error is None:
                self._relay.hub.unsubscribe(state)
            return
        if error is not None:
            following.set_exception(error)
            return
        # an exception here would reach only the loop's log, and every reply waits behind this one
        try:
            self._join(state, position, following)
        except Exception as exc:
            log.exception("subscribing to %r failed", state.channel)
            if state.attached:
                self._drop(state)  # counted, perhaps joined: let go of all of it
            else:
                self._relay.hub.unsubscribe(state)
            if not following.done():
                following.set_exception(BrokerError(f"cannot follow: {exc}"))

    def _join(self, state: _Channel, position: Position, following: asyncio.Future[str]) -> None:
        """The hub has the subscription: it counts, joins presence, and its reply can be sent."""
        # the subscribed reply's id: the future's result, not kept on the subscription
        subscribed_id = streamid.format_id(state.last) if position.latest else position.text
        if self._channels.get(state.channel) is not state:  # unsubscribed meanwhile
            self._relay.hub.unsubscribe(state)
            following.set_result(subscribed_id)
            return
        state.attached = True
        metrics.SUBSCRIPTIONS.inc()
        self._relay.presence.join(state.channel, self.client, self._entry)
        if state.presence:
            state.watcher = lambda client, frame: self._presence_event(state, client, frame)
            self._relay.hub.watch_presence(state.channel, state.watcher)
        following.set_result(subscribed_id)

    def _subscribed(self, state: _Channel, done: asyncio.Future[str], ref: str) -> str:
        """The reply to a subscribe, once the hub has it; from here on the subscription sends."""
        error = done.exception() if not done.cancelled() else BrokerError("the connection is closing")
        if error is not None:
            if self._channels.get(state.channel) is state:
                del self._channels[state.channel]
            detail = f"cannot follow the channel now: {error}"
            return self.error_text(ErrorCode.UNAVAILABLE, detail, state.channel, ref)
        if self._channels.get(state.channel) is state:
            state.live = True
            self._enqueue(state)  # what arrived meanwhile waits in its buffer
        return frames.subscribed_to(state.channel, done.result(), ref)

    def _unsubscribe(self, frame: dict[str, Any], ref: str) -> None:
        name = self._channel_of(frame, ref)
        if name is None:
            return
        state = self._channels.pop(name, None)
        if state is None:
            self.refuse(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {name!r}", name, ref)
            return
        self._drop(state)
        self.reply(frames.unsubscribed(name, ref))

    def _publish(self, frame: dict[str, Any], ref: str) -> None:
        name = self._channel_of(frame, ref, "publish")
        if name is None:
            return
        key = frame.get("key")
        if "data" not in frame or not (key is None or (isinstance(key, str) and valid_idempotency_key(key))):
            self.refuse(
                ErrorCode.INVALID_FRAME, f"data: expected JSON; key: {IDEMPOTENCY_KEY_RULE}", name, ref
            )
            return
        data = _json_text(frame["data"])
        max_bytes = self._relay.settings.max_message_bytes
        if data is not None and utf8_length_exceeds(data, max_bytes):
            self.refuse(
                ErrorCode.TOO_LARGE, f"data over RELAY_MAX_MESSAGE_BYTES ({max_bytes}): not stored", name, ref
            )
            return
        refusal = json_refusal(data) if data is not None else f"{JSON_RULE}: it nests deeper"
        if data is None or refusal is not None:
            self.refuse(ErrorCode.INVALID_FRAME, f"data: {refusal}", name, ref)
            return
        if self.over_rate(name, ref):
            return
        stored = self._publisher.submit(name, data, key)
        self.reply_later(stored, lambda done: self._acked(name, done, ref))

    def _acked(self, name: str, receipt: asyncio.Future[Receipt], ref: str) -> str:
        try:
            return frames.acked(name, receipt.result()[0], ref)
        except StorageError as exc:
            return self.error_text(ErrorCode.STORAGE_ERROR, f"not stored: {exc}", name, ref)
        except (Exception, asyncio.CancelledError) as exc:  # BrokerUnavailable, or the publish cancelled
            detail = f"not stored: {str(exc) or 'the publish was cancelled'}"
            return self.error_text(ErrorCode.UNAVAILABLE, detail, name, ref)

    def _presence(self, frame: dict[str, Any], ref: str) -> None:
        name = self._channel_of(frame, ref, "subscribe")
        if name is None:
            return
        listing = self._track(self._relay.presence.clients(name))
        self.reply_later(listing, lambda done: self._listed(name, done, ref))

    def _listed(self, name: str, done: asyncio.Future[list[str]], ref: str) -> str:
        if done.cancelled() or done.exception() is not None:
            detail = f"presence unknown now: {done.exception() if not done.cancelled() else 'cancelled'}"
            return self.error_text(ErrorCode.UNAVAILABLE, detail, name, ref)
        return frames.presence(name, done.result(), ref)

    def _refresh(self, frame: dict[str, Any], ref: str) -> None:
        token = frame.get("token")
        if not isinstance(token, str) or not token:
            self.refuse(ErrorCode.INVALID_FRAME, "token: expected a JWT", ref=ref)
            return
        try:
            grant = self._relay.auth.decode(token)
        except AuthError as exc:
            self.refuse(ErrorCode.INVALID_TOKEN, f"{exc.detail}; the connection keeps its token", ref=ref)
            return
        if grant.user != self._grant.user:
            detail = "the new token names another user (sub): connect again with it; the connection keeps its token"
            self.refuse(ErrorCode.INVALID_TOKEN, detail, ref=ref)
            return
        lost = next((name for name in self._channels if not grant.may_subscribe(name)), None)
        if lost is not None:
            detail = f"the new token does not allow to subscribe to {lost!r}: unsubscribe first; the connection keeps its token"
            self.refuse(ErrorCode.FORBIDDEN, detail, lost, ref)
            return
        self._grant = grant
        self._entry = entry_of(self.client, grant.user, grant.info)  # for the joins from now on
        self.expire_at(grant.expires)
        self.reply(frames.refreshed(ref))

    def _ping(self, frame: dict[str, Any], ref: str) -> None:
        """A client's liveness check (browsers cannot send WebSocket pings): answered ``pong``."""
        self.reply(frames.pong(ref))

    def _presence_event(self, state: _Channel, client: str, frame: str) -> None:
        """Another connection joined or left a channel this one watches (queued behind the
        subscription's ``subscribed`` reply, which was queued when the subscribe was read)."""
        if client == self.client or self._channels.get(state.channel) is not state or self.closing:
            return
        queued = self.queued_replies
        if queued >= _SLOW_REPLIES * self._window and (
            not self.out.writable or queued >= _MAX_REPLIES * self._window
        ):
            self.request_close(Close.TRY_AGAIN, "too slow to read its replies and presence frames")
            return
        self.reply(frame)

    # -- writing ---------------------------------------------------------------------------------

    def _enqueue(self, state: _Channel) -> None:
        """The subscription has something to send (its ``wake``): give it a turn."""
        if not state.queued:
            state.queued = True
            if self._ready is None:
                self._ready = deque()
            self._ready.append(state)
            self.wake.set()

    def _next(self) -> _Channel | None:
        ready = self._ready
        while ready:
            state = ready.popleft()
            state.queued = False
            if state.live and self._channels.get(state.channel) is state:
                return state
        self._ready = None  # empty: its memory goes, until the next turn is asked for
        return None

    async def write(self) -> None:
        """Serve replies and subscriptions until closing; then send the replies still owed (a
        publish read before the close is answered, as on ``/ws/producer``). The serving loop is
        here, not in a coroutine of its own, whose frame would stay alive as long as the connection."""
        out = self.out
        while not self.closing:
            await self.send_replies()
            state = self._next()
            if state is None:
                if self.has_replies:
                    await self.wait_for_first_reply()
                    continue
                if out.direct:
                    self._park()
                await self.wake.wait()
                continue
            assert state.attached
            try:
                batch = await state.take()
            except BrokerError as exc:  # Redis is away: this one tries again later, the others go on
                self._retry_later(state, exc)
                continue
            if state.backoff is not None:
                state.backoff.reset()
            if batch:
                await out.send(batch)
                metrics.DELIVERED.inc(len(batch))
                await asyncio.sleep(0)  # as on /ws/consumer: a shared page must not hold the loop
            if batch or state.behind:
                self._enqueue(state)  # more may follow: after the others' turn
            elif out.direct and not state.idle:
                state.idle = True
                self._idle.append(state)
        await self._send_owed()

    async def _send_owed(self) -> None:
        """Closing: the replies still owed, as long as the client is there."""
        while self.has_replies and not self.gone:
            await self.send_replies()
            if self.has_replies:
                await self.wait_for_first_reply()

    def _retry_later(self, state: _Channel, error: BrokerError) -> None:
        """A catch-up read failed: give the subscription a turn again after a backoff of its own."""
        state.backoff = state.backoff or Backoff()
        delay = state.backoff.failed()
        log.warning("catch-up read on %r failed (%s); retrying in %.1fs", state.channel, error, delay)
        asyncio.get_running_loop().call_later(delay, self._enqueue, state)

    def _park(self) -> None:
        """Nothing to send: the fan-out writes the live messages of the idle subscriptions itself."""
        out = self.out
        for state in self._idle:
            state.idle = False
            if state.attached and not state.queued and self._channels.get(state.channel) is state:
                state.park(out)
        self._idle.clear()

    # -- the end ---------------------------------------------------------------------------------

    def _track(self, work: Any) -> asyncio.Future[Any]:
        """A task whose result a reply renders; cancelled when the connection ends."""
        task: asyncio.Future[Any] = asyncio.ensure_future(work)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Future[Any]) -> None:
        tasks = self._tasks
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                self._tasks = None  # a set keeps the room it grew to: let it go
        if not task.cancelled():
            task.exception()  # retrieved: a connection that ended first renders no reply for it

    def _drop(self, state: _Channel) -> None:
        """Let go of a subscription: no frame of it is sent from here on; it leaves presence."""
        state.live = False
        if state.watcher is not None:
            self._relay.hub.unwatch_presence(state.channel, state.watcher)
        if state.attached:
            self._relay.hub.unsubscribe(state)
            state.attached = False
            metrics.SUBSCRIPTIONS.dec()
            self._relay.presence.leave(state.channel, self.client)

    def finish(self) -> None:
        for task in list(self._tasks or ()):
            task.cancel()
        for state in self._channels.values():
            self._drop(state)
        self._channels.clear()


_HANDLERS: Final[dict[str, Callable[[MultiplexConnection, dict[str, Any], str], None]]] = {
    "subscribe": MultiplexConnection._subscribe,
    "unsubscribe": MultiplexConnection._unsubscribe,
    "publish": MultiplexConnection._publish,
    "presence": MultiplexConnection._presence,
    "refresh": MultiplexConnection._refresh,
    "ping": MultiplexConnection._ping,
}
"""What each frame type calls: one table for every connection, not a dict of bound methods each."""


def _ref_of(ref: Any) -> str | None:
    """A frame's ``ref`` as JSON text (``""`` when it has none); None when it is no valid ref."""
    if ref is None:
        return ""
    if isinstance(ref, str) and len(ref) <= MAX_REF:
        return orjson.dumps(ref).decode()
    if isinstance(ref, int) and not isinstance(ref, bool) and -_INT_REF < ref < _INT_REF:
        return str(ref)
    return None


def _json_text(data: Any) -> str | None:
    """``data`` as JSON text to store; None when orjson cannot write it back (nested too deep)."""
    try:
        return orjson.dumps(data).decode()
    except orjson.JSONEncodeError:
        return None
