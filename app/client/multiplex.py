"""One ``/ws`` connection, many channels: subscribe, publish and ask for presence over one socket.

::

    async with Relay("http://127.0.0.1:8000") as relay:
        orders = await relay.subscribe("orders", from_="0", presence=True)
        entry_id = await relay.publish("orders", {"order": 17})
        async for event in orders:  # Message, Gap, and (with presence=True) Join and Leave
            ...

Every frame the client sends carries a ``ref`` (an increasing integer); its one reply is matched
by that ref. An ``error`` reply raises :class:`app.client.errors.Refused` from the call that sent
the frame, except ``unavailable`` (Redis unreachable for now), after which a ``subscribe`` or a
``publish`` is sent again after a capped, jittered backoff, a publish with the same ``key``.

Recovery: after any drop (1001, 1006, 1011, 1012, 1013, an instance killed, a handshake refused
with 502/503/504, a relay gone silent) the client reconnects with capped, jittered backoff,
subscribes every subscription again after the last message it received (or from where it was
subscribed, before any message) and sends every unanswered call again, each ``publish`` with the
``key`` it was first sent with, so that the relay stores it once. Each subscription sees every
message once, in stream order; a gap is reported, never silent (it may be reported again after a
drop that came before the next message). A call made while disconnected waits for the connection.
Any other close or refusal (a bad token, 1008) ends the client: every waiting call raises
:class:`app.client.errors.ClientError` and every subscription raises it after its buffered events.

Backpressure: each subscription holds at most ``buffer`` events the caller has not taken. When
one is full, the client stops reading the socket until the caller takes an event from it, so the
relay's own bounds apply (it holds back or reports a gap; its memory does not grow). One slow
subscription thus slows the whole connection, its other subscriptions and the replies to every
call included: a channel read at a pace of its own belongs on a connection of its own. For the same
reason, start reading a subscription as soon as :meth:`Relay.subscribe` returns it: one left unread
while others are subscribed can fill up with its backlog and hold back the replies they wait for.

Keepalive as :class:`app.client.consumer.Consumer`: after ``keepalive / 2`` seconds without a
frame the client pings, and it gives up on the connection (and reconnects) when nothing, not even
the pong, comes within the rest of ``keepalive``. While a full subscription stops the reading,
nothing is given up on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, TypeAlias

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from app.backoff import Backoff
from app.client.consumer import KEEPALIVE, Gap, Message, connection, receive, retry_reason
from app.client.errors import ClientError, Refused, Unreachable
from app.client.urls import websocket_url
from app.protocol import streamid
from app.protocol.codes import ErrorCode

BUFFER: Final = 1000
"""Events a subscription holds for its caller before the client stops reading (the default)."""

log = logging.getLogger("relay.client")


@dataclass(frozen=True, slots=True)
class Join:
    """Another connection subscribed to ``channel`` (for a subscription made with ``presence=True``).

    ``client`` is its connection id, ``user`` its token's ``sub`` and ``info`` its ``info`` claim."""

    channel: str
    client: str
    user: str | None = None
    info: Any = None


@dataclass(frozen=True, slots=True)
class Leave:
    """Another connection left ``channel``: it unsubscribed, closed, or its instance drained (an
    instance that died sends none: its connections drop out of the presence list instead)."""

    channel: str
    client: str
    user: str | None = None
    info: Any = None


Event: TypeAlias = Message | Gap | Join | Leave
_CHANNEL_FRAMES: Final = frozenset({"message", "gap", "join", "leave"})
_DROPS: Final = (InvalidStatus, ConnectionClosed, InvalidURI, InvalidHandshake, OSError, TimeoutError)


@dataclass(eq=False, slots=True)
class _Request:
    """One client frame waiting for its reply. ``body`` is its JSON without the ``ref``."""

    body: str
    kind: str
    reply: asyncio.Future[dict[str, Any]] | None = None  # None for a subscription's subscribe
    subscription: Subscription | None = None
    ref: int | None = None  # its ref on the current connection; None: not sent on it
    backoff: Backoff = field(default_factory=Backoff)


class Subscription:
    """One channel followed over a :class:`Relay`: an async iterator of its events.

    Iteration ends after :meth:`unsubscribe` or when the relay client is closed, and raises
    :class:`ClientError` (after the events already received) when the relay refuses the
    subscription for good or the client gives up. Made by :meth:`Relay.subscribe`.
    """

    def __init__(
        self, relay: Relay, channel: str, from_: str | None, presence: bool, buffer: int, cap: float
    ) -> None:
        self._relay = relay
        self.channel = channel
        self.presence = presence
        self._after = None if from_ == "$" else from_  # subscribe again after this (None: from now)
        self._delivered: str | None = None
        self._subscribed_at = self._after
        self._events: deque[Event] = deque()
        self._buffer = buffer
        self._more = asyncio.Event()  # the caller may take an event (or the end)
        self._room = asyncio.Event()  # the reader may put one
        self._end: BaseException | None = None
        self._last_gap: Gap | None = None
        self._ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._sent_on = 0  # the connection its subscribe went out on (0: none)
        self._live = False  # subscribed on the current connection: its frames are taken
        self._backoff = Backoff(cap=cap)

    @property
    def position(self) -> str | None:
        """The id of the last message the caller took, else the position it was subscribed at: a
        later ``subscribe(channel, from_=position)`` resumes right after what the caller has seen."""
        return self._delivered if self._delivered is not None else self._subscribed_at

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while not self._events:
            if isinstance(self._end, StopAsyncIteration):
                raise StopAsyncIteration
            if self._end is not None:
                raise self._end
            self._more.clear()
            await self._more.wait()
        event = self._events.popleft()
        self._room.set()
        if isinstance(event, Message):
            self._delivered = event.id
        return event

    async def unsubscribe(self) -> None:
        """Stop following the channel: the iteration ends (events not yet taken are dropped) and,
        once this returns, the relay sends nothing more of it on this connection."""
        await self._relay._unsubscribe(self)

    def _frame(self) -> str:
        frame: dict[str, Any] = {"type": "subscribe", "channel": self.channel, "presence": self.presence}
        if self._after is not None:
            frame["from"] = self._after
        return json.dumps(frame, separators=(",", ":"))

    def _fresh(self, event: Event) -> bool:
        """Whether ``event`` is new to the caller (a subscription made again may repeat the last
        gap); keeps the position to subscribe again from."""
        if isinstance(event, Message):
            after = streamid.validate(self._after) if self._after is not None else None
            if after is not None and streamid.parse(event.id) <= after:
                return False
            self._after = event.id
        elif isinstance(event, Gap):
            if event == self._last_gap:
                return False
            self._last_gap = event
        return True

    async def _put(self, event: Event) -> None:
        """Hold ``event`` for the caller; waits while the buffer is full (the reader stops)."""
        while len(self._events) >= self._buffer and self._end is None:
            self._room.clear()
            await self._room.wait()
        if self._end is None:
            self._events.append(event)
            self._more.set()

    def _close(self, end: BaseException | None) -> None:
        """End the iteration: at once when ``end`` is None, else with ``end`` after the events held."""
        if self._end is None:
            self._end = end if end is not None else StopAsyncIteration()
        if end is None:
            self._events.clear()
        self._more.set()
        self._room.set()


class Relay:
    """One ``/ws`` connection to the relay with any number of subscriptions; reconnects by itself.

    Use it in ``async with``; the connection is made in the background (:meth:`connected` waits
    for it). ``max_backoff`` caps the delay between reconnects; ``keepalive`` gives up on a silent
    connection after that many seconds (None: never); ``give_up_after`` raises :class:`Unreachable`
    from every call and subscription once no connection has succeeded for that many seconds (None:
    keep trying for ever); ``buffer`` bounds each subscription's events held for the caller (the
    module's docstring says what a full one does). ``reconnects`` counts the connections tried
    after the first; ``client_id`` is this connection's id in presence (None before the first).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        max_backoff: float = 5.0,
        keepalive: float | None = KEEPALIVE,
        give_up_after: float | None = None,
        buffer: int = BUFFER,
    ) -> None:
        if keepalive is not None and not keepalive > 0:
            raise ValueError(f"expected keepalive > 0 seconds or None, got {keepalive!r}")
        if buffer < 1:
            raise ValueError(f"expected buffer >= 1 event, got {buffer!r}")
        self._url = websocket_url(url.rstrip("/")) + "/ws"
        self._token = token
        self._max_backoff = max_backoff
        self._backoff = Backoff(cap=max_backoff)
        self.keepalive = keepalive
        self._give_up_after = give_up_after
        self._buffer = buffer
        self._subs: dict[str, Subscription] = {}
        self._leaving: dict[str, asyncio.Event] = {}  # channels whose unsubscribe is not answered yet
        self._requests: dict[_Request, None] = {}  # calls sent again after a drop, in call order
        self._inflight: dict[int, _Request] = {}  # by ref, on the current connection
        self._socket: ClientConnection | None = None  # the connection, once it said ``connected``
        self._ready = False  # every subscription and call sent on it: calls go out at once
        self._up = asyncio.Event()  # ready, or ended for good
        self._connection = 0
        self._ref = 0
        self._last_up = 0.0
        self._failure: ClientError | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.client_id: str | None = None
        self.reconnects = 0

    async def __aenter__(self) -> Relay:
        if self._runner is not None:
            raise ClientError("expected a Relay entered once, got a second 'async with'")
        self._last_up = asyncio.get_running_loop().time()
        self._runner = asyncio.create_task(self._run(), name=f"relay {self._url}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection: calls still waiting raise :class:`ClientError`, subscriptions end."""
        tasks = [task for task in (self._runner, *self._tasks) if task is not None and not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._failure is None:
            self._end(ClientError("the relay client is closed"), None)

    async def connected(self) -> str:
        """Wait until the connection is open and every subscription made on it again; its id."""
        while True:
            self._check_open()
            if self._ready and self.client_id is not None:
                return self.client_id
            await self._up.wait()

    async def subscribe(
        self, channel: str, *, from_: str | None = None, presence: bool = False
    ) -> Subscription:
        """Follow ``channel`` once the relay has said ``subscribed``: after the entry id ``from_``,
        from everything retained (``"0"``) or from now (None or ``"$"``). With ``presence``, the
        subscription also yields :class:`Join` and :class:`Leave` for the channel's other clients.
        Raises :class:`Refused` when the relay refuses (``forbidden``, ``invalid_channel``, ...)."""
        self._check_open()
        leaving = self._leaving.get(channel)
        if leaving is not None:
            await leaving.wait()
        if channel in self._subs:
            raise ClientError(f"expected one subscription per channel, got a second one for {channel!r}")
        sub = Subscription(self, channel, from_, presence, self._buffer, self._max_backoff)
        self._subs[channel] = sub
        if self._ready and self._socket is not None:
            await self._send_item(self._socket, sub)
        try:
            await sub._ready
        except asyncio.CancelledError:
            self._spawn(self._unsubscribe(sub))
            raise
        return sub

    async def publish(self, channel: str, data: Any) -> str:
        """Store ``data`` (any JSON value) on ``channel``; its entry id once Redis has it. Stored
        exactly once, however many drops and ``unavailable`` answers it goes through; publishes
        awaited one after the other are stored in that order, concurrent ones in any order."""
        key = uuid.uuid4().hex
        reply = await self._call({"type": "publish", "channel": channel, "data": data, "key": key})
        return str(reply["id"])

    async def presence(self, channel: str) -> list[dict[str, Any]]:
        """The clients present on ``channel`` on every instance (``client``, ``user``, ``info``)."""
        reply = await self._call({"type": "presence", "channel": channel})
        return list(reply["clients"])

    async def refresh(self, token: str) -> None:
        """Replace the connection's token (and the one later connections are made with, from now
        on: a drop before the answer reconnects with it); raises :class:`Refused` and keeps the old
        one when the relay refuses it."""
        previous, self._token = self._token, token
        try:
            await self._call({"type": "refresh", "token": token})
        except Refused:
            self._token = previous
            raise

    # -- calls ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._runner is None:
            raise ClientError("expected the Relay used in 'async with', got a call before it")

    async def _call(self, frame: dict[str, Any], *, replay: bool = True) -> dict[str, Any]:
        """Send ``frame`` with a ref of its own; its reply. ``replay``: sent again after a drop (an
        ``unsubscribe`` is not: the next connection does not make the subscription again)."""
        self._check_open()
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        body = json.dumps(frame, separators=(",", ":"))
        request = _Request(body, str(frame["type"]), reply, backoff=Backoff(cap=self._max_backoff))
        if replay:
            self._requests[request] = None
        try:
            if self._socket is not None and (self._ready or not replay):
                await self._send(self._socket, request)
            elif not replay:
                return {}
            return await reply
        finally:
            self._requests.pop(request, None)
            if request.ref is not None:
                self._inflight.pop(request.ref, None)

    async def _unsubscribe(self, sub: Subscription) -> None:
        if self._subs.get(sub.channel) is not sub:
            return
        del self._subs[sub.channel]
        sub._close(None)
        if self._socket is None or sub._sent_on != self._connection:
            return  # the connection that follows does not make it again
        left = self._leaving[sub.channel] = asyncio.Event()
        try:
            await self._call({"type": "unsubscribe", "channel": sub.channel}, replay=False)
        finally:
            del self._leaving[sub.channel]
            left.set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the callers (an unsubscribe nobody waits for, a retry later)."""
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()  # retrieved: a client that ended meanwhile is no news
        if error is not None and not isinstance(error, ClientError):
            log.error("relay client: %s", error, exc_info=error)

    # -- sending ----------------------------------------------------------------------------------

    async def _send(self, ws: ClientConnection, request: _Request) -> None:
        self._ref += 1
        request.ref = self._ref
        self._inflight[self._ref] = request
        with contextlib.suppress(ConnectionClosed):  # the reader sees the drop; the request waits
            await ws.send(f'{request.body[:-1]},"ref":{self._ref}}}')

    def _unsent(self, item: Subscription | _Request) -> bool:
        if isinstance(item, Subscription):
            return self._subs.get(item.channel) is item and item._sent_on != self._connection
        return item in self._requests and item.ref is None

    async def _send_item(self, ws: ClientConnection, item: Subscription | _Request) -> None:
        """Send a subscription's subscribe, or a call, unless it went out on this connection."""
        if not self._unsent(item):
            return
        if isinstance(item, Subscription):
            item._sent_on = self._connection
            await self._send(ws, _Request(item._frame(), "subscribe", subscription=item))
        else:
            await self._send(ws, item)

    async def _replay(self, ws: ClientConnection) -> None:
        """Subscribe every subscription again, send every unanswered call again (publishes with
        their keys, in call order); then calls go out at once."""
        while True:
            items: list[Subscription | _Request] = [*self._subs.values(), *self._requests]
            todo = [item for item in items if self._unsent(item)]
            if not todo:
                break
            for item in todo:
                await self._send_item(ws, item)
        self._ready = True
        self._up.set()

    def _retry_later(self, request: _Request) -> None:
        """After ``unavailable``: send the subscribe or the publish again after a backoff."""
        item: Subscription | _Request
        if request.subscription is not None:
            item, backoff = request.subscription, request.subscription._backoff
            item._sent_on = 0
        else:
            item, backoff = request, request.backoff
            request.ref = None

        async def later() -> None:
            await backoff.wait()
            if self._ready and self._socket is not None:
                await self._send_item(self._socket, item)

        self._spawn(later())

    # -- the connection ---------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                reason = await self._attempt()
                self.reconnects += 1
                if self._give_up_after is not None and loop.time() - self._last_up > self._give_up_after:
                    raise Unreachable(f"no connection to {self._url} for {self._give_up_after:g}s ({reason})")
                await self._backoff.wait()
        except ClientError as exc:
            log.warning("%s", exc)
            self._end(exc, exc)
        except (ValueError, KeyError, TypeError) as exc:  # a frame this client cannot read
            self._end(ClientError(f"unexpected frame from the relay: {type(exc).__name__}: {exc}"), None)
        except Exception as exc:  # never leave a caller waiting on a client that stopped
            log.exception("the relay client stopped")
            self._end(ClientError(f"the relay client stopped: {type(exc).__name__}: {exc}"), None)

    async def _attempt(self) -> str:
        """One connection, from its handshake to its end: why it ended, if it may be tried again
        (else raises ClientError)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        reason = "the relay closed the connection"
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            async with connection(self._url, headers, self.keepalive) as ws:
                await self._session(ws)
        except _DROPS as exc:
            reason = retry_reason(exc)
            log.warning("%s; reconnecting", reason)
        finally:
            self._dropped()
        if loop.time() - started > 2 * self._max_backoff:
            self._backoff.reset()  # it had been up a while: start the backoff again from the beginning
        return reason

    async def _session(self, ws: ClientConnection) -> None:
        hello = json.loads(await receive(ws, self.keepalive))
        if not isinstance(hello, dict) or hello.get("type") != "connected":
            raise ClientError(f"expected a connected frame first, got {str(hello)[:200]}")
        self.client_id = str(hello["client"])
        self._connection += 1
        self._socket = ws
        self._last_up = asyncio.get_running_loop().time()
        replay = asyncio.create_task(self._replay(ws))
        try:
            await self._read(ws)
        finally:
            replay.cancel()
            await asyncio.wait([replay])

    async def _read(self, ws: ClientConnection) -> None:
        while True:
            try:
                raw = await receive(ws, self.keepalive)
            except ConnectionClosedOK:  # 1000 or 1001: the relay is done with this connection
                return
            frame = json.loads(raw)
            if not isinstance(frame, dict):
                raise ValueError(f"expected a JSON object, got {str(raw)[:200]}")
            if frame.get("type") in _CHANNEL_FRAMES:
                await self._deliver(frame)
            else:
                self._on_reply(frame)

    def _dropped(self) -> None:
        """The connection is gone: what was sent on it is sent again on the next one."""
        self._socket = None
        self._ready = False
        self._up.clear()
        for request in self._inflight.values():
            if request.kind == "unsubscribe" and request.reply is not None and not request.reply.done():
                request.reply.set_result({})
            elif request.subscription is None:
                request.ref = None
        self._inflight.clear()
        for sub in self._subs.values():
            sub._live = False

    def _end(self, error: ClientError, end: BaseException | None) -> None:
        """No more connections: waiting calls raise ``error``; subscriptions end with ``end``."""
        self._failure = error
        self._socket = None
        self._ready = False
        for request in (*self._requests, *self._inflight.values()):
            if request.reply is not None and not request.reply.done():
                request.reply.set_exception(error)
        for sub in self._subs.values():
            sub._close(end)
            if not sub._ready.done():
                sub._ready.set_exception(error)
        self._subs.clear()
        self._requests.clear()
        self._inflight.clear()
        self._up.set()

    # -- frames from the relay --------------------------------------------------------------------

    async def _deliver(self, frame: dict[str, Any]) -> None:
        sub = self._subs.get(str(frame.get("channel")))
        if sub is None or not sub._live:
            return  # unsubscribed, or not yet subscribed again on this connection
        event = _event_of(frame)
        if sub._fresh(event):
            await sub._put(event)

    def _on_reply(self, frame: dict[str, Any]) -> None:
        ref = frame.get("ref")
        request = self._inflight.pop(ref, None) if isinstance(ref, int) else None
        if request is None:
            if frame.get("type") == "error":
                log.warning("relay: %s: %s", frame.get("code"), frame.get("detail"))
            return
        if frame.get("type") == "error":
            self._on_error(request, frame)
        elif request.subscription is not None:
            self._on_subscribed(request.subscription, str(frame["id"]))
        elif request.reply is not None and not request.reply.done():
            request.reply.set_result(frame)

    def _on_subscribed(self, sub: Subscription, position: str) -> None:
        if self._subs.get(sub.channel) is not sub:
            return
        sub._live = True
        sub._backoff.reset()
        if sub._after is None:
            sub._after = position
        if not sub._ready.done():
            sub._subscribed_at = position
            sub._ready.set_result(position)

    def _on_error(self, request: _Request, frame: dict[str, Any]) -> None:
        code, detail = str(frame.get("code")), str(frame.get("detail", ""))
        if code == ErrorCode.UNAVAILABLE and request.kind in ("publish", "subscribe"):
            self._retry_later(request)
            return
        error = Refused(code, detail, frame.get("channel"))
        sub = request.subscription
        if sub is not None:
            if self._subs.get(sub.channel) is sub:
                del self._subs[sub.channel]
            sub._close(error)
            if not sub._ready.done():
                sub._ready.set_exception(error)
        elif request.reply is None or request.reply.done():
            return
        elif request.kind == "unsubscribe" and code == ErrorCode.NOT_SUBSCRIBED:
            request.reply.set_result(frame)  # gone either way
        else:
            request.reply.set_exception(error)


def _event_of(frame: dict[str, Any]) -> Event:
    kind, channel = frame["type"], str(frame["channel"])
    if kind == "message":
        return Message(str(frame["id"]), channel, frame["data"])
    if kind == "gap":
        return Gap(str(frame["from"]), str(frame["next"]), channel)
    client = frame["client"]
    made = Join if kind == "join" else Leave
    return made(channel, str(client["client"]), client.get("user"), client.get("info"))
