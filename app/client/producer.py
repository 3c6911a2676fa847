"""Publish over HTTP with an ``Idempotency-Key`` per message: each is stored exactly once.

At most ``window`` messages are in flight (``publish`` waits for room: backpressure). A message
whose answer was lost (a dropped connection, no answer within ``attempt_timeout``, a 502/503/504
from the relay or the balancer) is sent again with the same key until it is acknowledged, so it is
stored exactly once. The timeout is short (the relay answers in milliseconds, or ``unavailable``
within ``RELAY_REDIS_TIMEOUT``) so that a hung instance costs seconds: through a balancer the next
attempt goes to another one.
Messages published one after the other (each awaited) are stored in that order; concurrent
``publish`` calls may be stored in any order. Each key stays in Redis for
``RELAY_IDEMPOTENCY_TTL`` (see docs/operating.md, retention sizing).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import httpx2

from app.backoff import Backoff
from app.client.errors import ClientError, NotStored, error_of
from app.client.urls import http_url
from app.protocol.codes import RETRY_STATUSES

ATTEMPT_TIMEOUT: Final = 3.0
"""Seconds one attempt waits for its answer before the message is sent again (the default)."""


class Producer:
    """Publish messages with backpressure; each is stored exactly once, even across retries.

    ``retries`` counts the attempts that got no usable answer (each was followed by another).
    """

    def __init__(
        self,
        url: str,
        channel: str,
        *,
        window: int = 64,
        max_backoff: float = 5.0,
        attempts: int = 20,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        token: str | None = None,
    ) -> None:
        if not attempt_timeout > 0:
            raise ValueError(f"expected attempt_timeout > 0 seconds, got {attempt_timeout!r}")
        self._base = http_url(url.rstrip("/"))
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.channel = channel
        self._room = asyncio.Semaphore(window)
        self._run = uuid.uuid4().hex[:16]
        self._seq = 0
        self._max_backoff = max_backoff
        self._attempts = attempts
        self._attempt_timeout = attempt_timeout
        self._http: httpx2.AsyncClient | None = None
        self.retries = 0

    async def __aenter__(self) -> Producer:
        self._http = httpx2.AsyncClient(
            base_url=self._base, timeout=self._attempt_timeout, headers=self._headers
        )
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
        if self._http is None:
            raise ClientError("use the producer in 'async with'")
        backoff = Backoff(cap=self._max_backoff)
        for _ in range(self._attempts):
            response = await self._attempt(self._http, body, key)
            if response is not None and response.status_code == 201:
                return str(response.json()["id"])
            if response is not None and response.status_code not in RETRY_STATUSES:
                raise ClientError(error_of(response))
            self.retries += 1
            await backoff.wait()
        raise NotStored(f"not stored after {self._attempts} attempts (the relay stayed unavailable)")

    async def _attempt(self, http: httpx2.AsyncClient, body: str, key: str) -> httpx2.Response | None:
        """One POST, answered within the attempt timeout; None when no answer came.

        The bound is httpx2's own (the client's timeout, for connecting, sending and reading each),
        not a cancellation from outside: a request cancelled mid-flight can leave its socket for the
        garbage collector to close."""
        try:
            return await http.post(
                f"/channels/{quote(self.channel, safe='')}/messages",
                content=body,
                headers={"Idempotency-Key": key},
            )
        except httpx2.TransportError:  # its timeouts included
            return None
