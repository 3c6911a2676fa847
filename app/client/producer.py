"""Publish over HTTP with an ``Idempotency-Key`` per message: each is stored exactly once.

At most ``window`` messages are in flight (``publish`` waits for room: backpressure). A message
whose answer was lost (a dropped connection, a timeout, a 502/503/504 from the relay or the
balancer) is sent again with the same key until it is acknowledged, so it is stored exactly once.
Messages published one after the other (each awaited) are stored in that order; concurrent
``publish`` calls may be stored in any order. Each key stays in Redis for
``RELAY_IDEMPOTENCY_TTL`` (see docs/operating.md, retention sizing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx2

from app.backoff import Backoff
from app.client.errors import ClientError, NotStored, error_of
from app.client.urls import http_url
from app.protocol.codes import RETRY_STATUSES


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
        if self._http is None:
            raise ClientError("use the producer in 'async with'")
        backoff = Backoff(cap=self._max_backoff)
        for _ in range(self._attempts):
            with contextlib.suppress(httpx2.TransportError):
                response = await self._http.post(
                    f"/channels/{quote(self.channel, safe='')}/messages",
                    content=body,
                    headers={"Idempotency-Key": key},
                )
                if response.status_code == 201:
                    return str(response.json()["id"])
                if response.status_code not in RETRY_STATUSES:
                    raise ClientError(error_of(response))
            await backoff.wait()
        raise NotStored(f"not stored after {self._attempts} attempts (the relay stayed unavailable)")
