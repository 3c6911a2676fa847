"""A client for the relay: consume with automatic resume, publish without duplicates.

::

    from app.client import Consumer, Producer, Message, Gap

    async for event in Consumer("http://127.0.0.1:8080", "orders", from_="0"):
        if isinstance(event, Gap):
            ...  # retention removed messages you had not received: say so, resync, ...
        else:
            print(event.id, event.data)

    async with Producer("http://127.0.0.1:8080", "orders") as producer:
        entry_id = await producer.publish({"order": 17})

**Consumer**: when the socket drops (instance drained with 1012, killed, network gone), it
reconnects with capped, jittered backoff and resumes after the last message it yielded, so the
caller sees every message once, in order; ``Gap`` events are passed on, never swallowed. With
``group=`` it is a work-queue member and acknowledges each message when the caller asks for the
next one (or explicitly with :meth:`Consumer.ack`).

**Producer**: publishes over HTTP with an ``Idempotency-Key`` per message, at most ``window``
messages in flight (``publish`` waits for room: backpressure). A message whose answer was lost
(a dropped connection, a timeout, a 502/503/504 from the relay or the balancer) is sent again with
the same key until it is acknowledged, so it is stored exactly once. Messages published one after
the other (each awaited) are stored in that order; concurrent ``publish`` calls may be
stored in any order. Each key stays in Redis for ``RELAY_IDEMPOTENCY_TTL`` (see
docs/operating.md, retention sizing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote, urlencode

import httpx2
from redis.backoff import ExponentialWithJitterBackoff
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

RETRY_CLOSE_CODES: Final = frozenset({1001, 1006, 1011, 1012, 1013})
"""Close codes after which the consumer reconnects (others mean: fix the client)."""
RETRY_STATUSES: Final = frozenset({502, 503, 504})
"""HTTP answers worth trying again: the relay (or the balancer in front) is busy or changing."""
MAX_FRAME: Final = 32 * 1024 * 1024  # above any RELAY_MAX_MESSAGE_BYTES
_HARMLESS: Final = frozenset({"unavailable", "unknown_id"})  # error frames that do not end a consumer

log = logging.getLogger("relay.client")


class ClientError(Exception):
    """The relay refused what the client asked, for good (a bad channel, a policy close)."""


class NotStored(ClientError):
    """The relay stayed unavailable for every attempt: the message is not known to be stored."""


class Unreachable(ClientError):
    """No connection to the relay could be made for longer than the caller allows."""


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    channel: str
    data: Any
    delivery: int = 1


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages after ``after`` and before ``next`` were removed by retention before delivery."""

    after: str
    next: str


def websocket_url(base: str) -> str:
    """``http://host:port`` (or ws://) → ``ws://host:port``."""
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :]
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :]
    return base


def http_url(base: str) -> str:
    if base.startswith("wss://"):
        return "https://" + base[len("wss://") :]
    if base.startswith("ws://"):
        return "http://" + base[len("ws://") :]
    return base


class Consumer:
    """Iterate over a channel's messages (and gaps); reconnects and resumes by itself.

    ``give_up_after``: raise :class:`Unreachable` when no connection has succeeded for this many
    seconds (None: keep trying for ever). In group mode a message is acknowledged when the caller
    asks for the next one, or earlier with :meth:`ack`; one the caller never came back for is
    delivered again (to some member) after the relay's claim idle time.
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
        token: str | None = None,
    ) -> None:
        self._base = websocket_url(url.rstrip("/"))
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.channel = channel
        self._position = None if from_ == "$" else from_  # after this id (None: from now)
        self._group = group
        self._prefetch = prefetch
        self._max_backoff = max_backoff
        self._backoff = ExponentialWithJitterBackoff(base=0.1, cap=max_backoff)
        self._give_up_after = give_up_after
        self._ws: ClientConnection | None = None
        self._unacked: str | None = None
        self.reconnects = 0

    @property
    def position(self) -> str | None:
        """The id after which a reconnect resumes (the last message yielded)."""
        return self._position

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

    async def __aiter__(self) -> AsyncIterator[Message | Gap]:
        loop = asyncio.get_running_loop()
        failures = 0
        last_success = loop.time()
        while True:
            started = loop.time()
            reason = "the relay closed the connection"
            try:
                async with connect(
                    self._url(),
                    open_timeout=10,
                    ping_interval=20,
                    max_size=MAX_FRAME,
                    additional_headers=self._headers,
                ) as ws:
                    self._ws = ws
                    self._unacked = None  # a new connection: what was held is the relay's to redeliver
                    await self._subscribed(ws)
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
                TimeoutError,
            ) as exc:
                reason = _retryable(exc)
                log.warning("%s; reconnecting", reason)
            finally:
                self._ws = None
            if loop.time() - started > 2 * self._max_backoff:
                failures = 0  # it had been up a while: start the backoff again from the beginning
            failures += 1
            self.reconnects += 1
            if self._give_up_after is not None and loop.time() - last_success > self._give_up_after:
                raise Unreachable(f"no connection to {self._base} for {self._give_up_after:g}s ({reason})")
            await asyncio.sleep(self._backoff.compute(failures))

    async def _subscribed(self, ws: ClientConnection) -> None:
        first = json.loads(await ws.recv())
        if first.get("type") != "subscribed":
            raise ClientError(f"expected a subscribed frame, got {first}")
        if self._group is None and self._position is None:
            self._position = first["id"]  # resume from here if dropped before any message

    async def _events(self, ws: ClientConnection) -> AsyncIterator[Message | Gap]:
        async for raw in ws:
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
                yield Gap(frame["from"], frame["next"])
            elif kind == "error" and frame.get("code") not in _HARMLESS:
                raise ClientError(f"{frame.get('code')}: {frame.get('detail')}")
            elif kind == "error":
                log.warning("relay: %s: %s", frame.get("code"), frame.get("detail"))


def _retryable(exc: Exception) -> str:
    """Why the connection ended, if trying again may succeed; else raise ClientError."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in RETRY_STATUSES:
            return f"refused with {status}"
        raise ClientError(_refusal(exc)) from exc
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        if code in RETRY_CLOSE_CODES:
            return f"connection closed ({code})"
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
        raise ClientError(f"the relay closed the connection: {code} {reason}") from exc
    if isinstance(exc, InvalidURI):
        raise ClientError(str(exc)) from exc
    return f"cannot connect ({type(exc).__name__}: {exc})"  # gone, unreachable, or cut mid-handshake


class Producer:
    """Publish messages with backpressure; each is stored exactly once, even across retries."""

    def __init__(
        self,
        url: str,
        channel: str,
        *,
        window: int = 64,
        max_backoff: float = 5.0,
        attempts: int = 20,
        token: str | None = None,
    ) -> None:
        self._base = http_url(url.rstrip("/"))
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.channel = channel
        self._room = asyncio.Semaphore(window)
        self._run = uuid.uuid4().hex[:16]
        self._seq = 0
        self._max_backoff = max_backoff
        self._attempts = attempts
        self._http: httpx2.AsyncClient | None = None

    async def __aenter__(self) -> Producer:
        self._http = httpx2.AsyncClient(base_url=self._base, timeout=10, headers=self._headers)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def publish(self, data: Any) -> str:
        """Store one message; returns its id. Waits while ``window`` messages are in flight."""
        async with self._room:
            self._seq += 1
            return await self._post(json.dumps(data), f"{self._run}-{self._seq}")

    async def _post(self, body: str, key: str) -> str:
        assert self._http is not None, "use the producer in 'async with'"
        backoff = ExponentialWithJitterBackoff(base=0.1, cap=self._max_backoff)
        for attempt in range(1, self._attempts + 1):
            with contextlib.suppress(httpx2.TransportError):
                response = await self._http.post(
                    f"/channels/{quote(self.channel, safe='')}/messages",
                    content=body,
                    headers={"Idempotency-Key": key},
                )
                if response.status_code == 201:
                    return str(response.json()["id"])
                if response.status_code not in RETRY_STATUSES:
                    raise ClientError(_error_of(response))
            await asyncio.sleep(backoff.compute(attempt))
        raise NotStored(f"not stored after {self._attempts} attempts (the relay stayed unavailable)")


def _error_of(response: httpx2.Response) -> str:
    try:
        body = response.json()
        return f"{response.status_code} {body.get('code')}: {body.get('detail')}"
    except ValueError:
        return f"{response.status_code}: {response.text[:200]}"


def _refusal(exc: InvalidStatus) -> str:
    try:
        body = json.loads(exc.response.body or b"{}")
        return f"{exc.response.status_code} {body.get('code')}: {body.get('detail')}"
    except ValueError:
        return f"refused with {exc.response.status_code}"
