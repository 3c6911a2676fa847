"""Iterate over a channel's messages (and gaps); reconnect and resume by itself.

When the socket drops (an instance drained with 1012, killed, the network gone), the consumer
reconnects with capped, jittered backoff and resumes after the last message it yielded, so the
caller sees every message once, in order; ``Gap`` events are passed on, never swallowed. With
``group=`` it is a work-queue member and acknowledges each message when the caller asks for the
next one (or explicitly with :meth:`Consumer.ack`).

A relay that stops answering without closing (a hung process, a cut network) is given up on
within ``keepalive`` seconds of the consumer waiting on it: after half of that with no frame the
consumer pings, gives the relay a third of it to answer (any frame counts, not only the pong),
and a sixth to close; then it reconnects as after any drop. Only a consumer that waits pings: one
whose messages keep coming sends nothing, and one whose caller is busy is not given up on for the
frames it has not asked for yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from app.backoff import Backoff
from app.client.errors import ClientError, Unreachable, refusal_of
from app.client.urls import websocket_url
from app.protocol.codes import NOT_FATAL, RETRY_CLOSES, RETRY_STATUSES, Close

MAX_FRAME: Final = 32 * 1024 * 1024  # above any RELAY_MAX_MESSAGE_BYTES
KEEPALIVE: Final = 6.0
"""Seconds within which a consumer gives up on a relay that sends nothing (the default)."""

log = logging.getLogger("relay.client")


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    channel: str
    data: Any
    delivery: int = 1


class Silent(TimeoutError):
    """The relay sent nothing, not even a pong, for the consumer's ``keepalive``."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages after ``after`` and before ``next`` were removed by retention before delivery.

    ``channel`` names the channel they were on (None only when made without one)."""

    after: str
    next: str
    channel: str | None = None


class Consumer:
    """Iterate over a channel's messages (and gaps); reconnects and resumes by itself.

    ``give_up_after``: raise :class:`Unreachable` when no connection has succeeded for this many
    seconds (None: keep trying for ever). ``keepalive``: give up on a connection, and reconnect,
    when the relay has sent nothing (no frame, no pong) for this many seconds while the consumer
    waited (None: never; the module's docstring says how it pings). In group mode a message is
    acknowledged when the caller asks for the next one, or earlier with :meth:`ack`; one the caller
    never came back for is delivered again (to some member) after the relay's claim idle time.
    """

    def __init__(
        self,
        url: str,
        channel: str,
        *,
        from_: str | None = None,
        group: str | None = None,
        prefetch: int | None = None,
        max_backoff: float = 5.0,
        give_up_after: float | None = None,
        keepalive: float | None = KEEPALIVE,
        token: str | None = None,
    ) -> None:
        if keepalive is not None and not keepalive > 0:
            raise ValueError(f"expected keepalive > 0 seconds or None, got {keepalive!r}")
        self._base = websocket_url(url.rstrip("/"))
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.channel = channel
        self._position = None if from_ == "$" else from_  # after this id (None: from now)
        self._group = group
        self._prefetch = prefetch
        self._max_backoff = max_backoff
        self._backoff = Backoff(cap=max_backoff)
        self._give_up_after = give_up_after
        self.keepalive = keepalive
        self._ws: ClientConnection | None = None
        self._unacked: str | None = None
        self._subscribed = asyncio.Event()
        self.reconnects = 0

    @property
    def position(self) -> str | None:
        """The id after which a reconnect resumes (the last message yielded)."""
        return self._position

    async def subscribed(self) -> str | None:
        """Wait until the consumer follows the channel (the connection's ``subscribed`` frame came;
        after a drop, until it came again): what is published from then on reaches it. Returns the
        position (None for a group member)."""
        await self._subscribed.wait()
        return self._position if self._group is None else None

    def _url(self) -> str:
        params = {}
        if self._group is not None:
            params["group"] = self._group
            if self._prefetch is not None:
                params["prefetch"] = str(self._prefetch)
        if self._position is not None and (self._group is None or self._position == "0"):
            params["from"] = self._position
        query = urlencode(params)
        return f"{self._base}/ws/consumer/{quote(self.channel, safe='')}" + (f"?{query}" if query else "")

    async def ack(self, entry_id: str) -> None:
        """Acknowledge a group message now (otherwise done when the next one is asked for)."""
        if self._unacked == entry_id:
            self._unacked = None
        if self._ws is not None:
            with contextlib.suppress(ConnectionClosed):  # it comes back after the idle time
                await self._ws.send(json.dumps({"type": "ack", "id": entry_id}))

    async def __aiter__(self) -> AsyncGenerator[Message | Gap, None]:
        """The channel's events. Leaving the loop early leaves the socket open until the generator
        is closed: ``async with contextlib.aclosing(aiter(consumer)) as events`` closes it at once."""
        loop = asyncio.get_running_loop()
        last_success = loop.time()
        while True:
            started = loop.time()
            reason = "the relay closed the connection"
            try:
                async with connection(self._url(), self._headers, self.keepalive) as ws:
                    self._ws = ws
                    self._unacked = None  # a new connection: what was held is the relay's to redeliver
                    await self._await_subscribed(ws)
                    last_success = loop.time()
                    async for event in self._events(ws):
                        yield event
                        if self._unacked is not None:  # the caller asks for the next: done with this one
                            await self.ack(self._unacked)
            except (
                InvalidStatus,
                ConnectionClosed,
                InvalidURI,
                InvalidHandshake,
                OSError,
                TimeoutError,  # Silent included
            ) as exc:
                reason = retry_reason(exc)
                log.warning("%s; reconnecting", reason)
            finally:
                self._ws = None
                self._subscribed.clear()
            if loop.time() - started > 2 * self._max_backoff:
                self._backoff.reset()  # it had been up a while: start the backoff again from the beginning
            self.reconnects += 1
            if self._give_up_after is not None and loop.time() - last_success > self._give_up_after:
                raise Unreachable(f"no connection to {self._base} for {self._give_up_after:g}s ({reason})")
            await self._backoff.wait()

    async def _recv(self, ws: ClientConnection) -> str | bytes:
        return await receive(ws, self.keepalive)

    async def _await_subscribed(self, ws: ClientConnection) -> None:
        first = json.loads(await self._recv(ws))
        if first.get("type") != "subscribed":
            raise ClientError(f"expected a subscribed frame, got {first}")
        if self._group is None and self._position is None:
            self._position = first["id"]  # resume from here if dropped before any message
        self._subscribed.set()

    async def _events(self, ws: ClientConnection) -> AsyncIterator[Message | Gap]:
        while True:
            try:
                raw = await self._recv(ws)
            except ConnectionClosedOK:  # 1000 or 1001: the relay is done with this connection
                return
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "message":
                message = Message(frame["id"], frame["channel"], frame["data"], frame.get("delivery", 1))
                if self._group is None:
                    self._position = message.id
                else:
                    self._unacked = message.id
                yield message
            elif kind == "gap":
                yield Gap(frame["from"], frame["next"], self.channel)
            elif kind == "error" and frame.get("code") not in NOT_FATAL:
                raise ClientError(f"{frame.get('code')}: {frame.get('detail')}")
            elif kind == "error":
                log.warning("relay: %s: %s", frame.get("code"), frame.get("detail"))


@contextlib.asynccontextmanager
async def connection(
    url: str, headers: dict[str, str], keepalive: float | None
) -> AsyncIterator[ClientConnection]:
    """A socket to the relay, pinged only while waiting (:func:`receive`). Closed with 1000 when
    its user is done with it (a task cancelled, a generator closed), where leaving ``connect``'s
    block with an exception would say 1011, an error, to the relay."""
    async with connect(
        url,
        open_timeout=10,
        ping_interval=None,
        close_timeout=keepalive / 6 if keepalive is not None else 10,
        max_size=MAX_FRAME,
        additional_headers=headers,
    ) as ws:
        try:
            yield ws
        except (GeneratorExit, asyncio.CancelledError):
            await ws.close()
            raise


async def receive(ws: ClientConnection, keepalive: float | None) -> str | bytes:
    """The next frame; raises :class:`Silent` when the relay sends nothing for ``keepalive``
    (the module's docstring says how it pings). Shared by :class:`Consumer` and
    :class:`app.client.multiplex.Relay`."""
    if keepalive is None:
        return await ws.recv()
    while True:
        try:
            async with asyncio.timeout(keepalive / 2):
                return await ws.recv()  # cancelling recv() loses nothing
        except TimeoutError:
            pass
        pong = asyncio.ensure_future(await ws.ping())  # a future already: typed as one
        frame = asyncio.ensure_future(ws.recv())
        await asyncio.wait((frame, pong), timeout=keepalive / 3, return_when=asyncio.FIRST_COMPLETED)
        if frame.done():
            return frame.result()
        frame.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await frame
        if not pong.done():
            raise Silent(f"the relay sent nothing for {keepalive * 5 / 6:g}s, not even a pong")
        pong.result()  # ConnectionClosed if it closed meanwhile


def retry_reason(exc: Exception) -> str:
    """Why the connection ended, if trying again may succeed; else raise ClientError."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in RETRY_STATUSES:
            return f"refused with {status}"
        raise ClientError(refusal_of(exc)) from exc
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else Close.ABNORMAL
        if code in RETRY_CLOSES:
            return f"connection closed ({code})"
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
        raise ClientError(f"the relay closed the connection: {code} {reason}") from exc
    if isinstance(exc, InvalidURI):
        raise ClientError(str(exc)) from exc
    if isinstance(exc, Silent):
        return str(exc)
    return f"cannot connect ({type(exc).__name__}: {exc})"  # gone, unreachable, or cut mid-handshake
