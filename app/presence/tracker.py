"""One process's presence: its connections' entries, their joins and leaves, its heartbeat.

- **Names**: a connection's id is ``<boot>.<n>``; ``<boot>`` is drawn at random when the process
  starts, so ids never repeat across instances or restarts, and every entry says whose it is.
- **Writes**: :meth:`Presence.join` and :meth:`Presence.leave` only queue a change; one writer task
  sends whatever is queued in one round trip, in order, and on failure keeps it and tries again
  with backoff (a change applied twice does no harm). A leave waits for nothing but Redis. A list
  made here counts what is still queued, so a connection sees its own join at once.
- **Heartbeat**: ``relay:present:<boot>`` is set every third of ``RELAY_PRESENCE_TTL`` and expires
  after it: one command per beat, however many connections. The writer sends nothing before the
  first beat went through, or another instance's list would take the entries for a dead
  process's. A beat that finds its key expired (Redis lost it, or was away longer than the TTL)
  queues a join again for every entry the process holds: lists may have dropped them meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import deque
from typing import Any, Final

import orjson

from app.backoff import Backoff
from app.broker.interface import PresenceChange, PresenceStore
from app.errors import BrokerError
from app.protocol import frames
from app.settings import Settings

log = logging.getLogger("relay.presence")

_BATCH: Final = 512  # changes per round trip


def entry_of(client: str, user: Any, info: Any) -> str:
    """A presence entry as the lists and the join and leave frames show it (JSON text)."""
    return orjson.dumps({"client": client, "user": user, "info": info}).decode()


class Presence:
    def __init__(self, store: PresenceStore, settings: Settings) -> None:
        self._store = store
        self.boot = secrets.token_hex(8)
        self._name = settings.instance_name
        self._ttl = settings.presence_ttl
        self._numbers = itertools.count(1)
        self._queue: deque[PresenceChange] = deque()
        self._held: dict[tuple[str, str], str] = {}  # (channel, client) -> entry, joined here
        self._queued = asyncio.Event()
        self._empty = asyncio.Event()  # nothing queued: a closing instance waits for it
        self._empty.set()
        self._beating = asyncio.Event()  # the heartbeat went through once: entries may be written
        self._tasks: list[asyncio.Task[None]] = []

    def client_id(self) -> str:
        """A new connection's id, unique across instances and restarts."""
        return f"{self.boot}.{next(self._numbers)}"

    def join(self, channel: str, client: str, entry: str) -> None:
        self._held[(channel, client)] = entry
        self._change(PresenceChange(channel, client, entry, frames.joined(channel, entry), join=True))

    def leave(self, channel: str, client: str) -> None:
        entry = self._held.pop((channel, client), None)
        if entry is not None:
            self._change(PresenceChange(channel, client, entry, frames.left(channel, entry), join=False))

    async def clients(self, channel: str) -> list[str]:
        """Every entry on the channel, on every instance; raises BrokerError. The changes of this
        process not written yet count as made: a connection that subscribed, then asks, is listed."""
        present = await self._store.presence_list(channel)
        for change in self._queue:
            if change.channel != channel:
                continue
            if change.join:
                present[change.client] = change.entry
            else:
                present.pop(change.client, None)
        return list(present.values())

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._beat(), name="relay-presence-beat"),
            loop.create_task(self._write(), name="relay-presence-writer"),
        ]

    async def close(self, within: float) -> None:
        """Send the leaves still queued (the drain closed every connection), within ``within``
        seconds; then stop. What is left is dropped with the heartbeat, within the TTL."""
        if self._queue and self._beating.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), within)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _change(self, change: PresenceChange) -> None:
        self._queue.append(change)
        self._queued.set()
        self._empty.clear()

    async def _beat(self) -> None:
        backoff = Backoff(cap=self._ttl / 3)
        ttl_ms = int(self._ttl * 1000)
        first = True
        while True:
            try:
                was_alive = await self._store.presence_beat(self.boot, self._name, ttl_ms)
            except BrokerError as exc:
                delay = backoff.failed()
                log.warning("presence heartbeat failed (%s); next try in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if not was_alive and not first and self._held:
                log.warning("presence heartbeat had expired: joining %d entries again", len(self._held))
                for (channel, client), entry in self._held.items():
                    self._change(PresenceChange(channel, client, entry, frames.joined(channel, entry), True))
            first = False
            self._beating.set()
            await asyncio.sleep(self._ttl / 3)

    async def _write(self) -> None:
        await self._beating.wait()
        backoff = Backoff()
        queue = self._queue
        while True:
            if not queue:
                self._queued.clear()
                await self._queued.wait()
            batch = [queue[i] for i in range(min(_BATCH, len(queue)))]
            try:
                await self._store.presence_change(batch)
            except BrokerError as exc:
                delay = backoff.failed()
                log.warning(
                    "presence: %d change(s) not written (%s); retrying in %.1fs", len(batch), exc, delay
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            for _ in batch:
                queue.popleft()
            if not queue:
                self._empty.set()
