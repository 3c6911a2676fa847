"""One process's presence: its connections' entries, their joins and leaves, its heartbeat.

- **Names**: a connection's id is ``<boot>.<n>``; ``<boot>`` is drawn at random when the process
  starts, so ids never repeat across instances or restarts, and every entry says whose it is.
- **Writes**: :meth:`Presence.join` and :meth:`Presence.leave` only queue a change, the last one
  per (channel, connection), and a leave cancels a join not sent yet: a client that subscribes
  and unsubscribes in a loop while Redis is away holds one change at most, not thousands. One writer task sends what is queued in one round trip, in
  order, and on failure keeps it and tries again with backoff (a change applied twice does no
  harm); a change Redis refuses for good (the key holds something else) is dropped and logged.
- **Own writes first**: a list made here applies, on top of what Redis said, every change made
  since the list began, written or not: a connection sees its own join, and no longer sees itself
  after its leave, at once.
- **Heartbeat**: ``relay:present:<boot>`` holds ``"<epoch> <instance name>"``; it is set every third
  of ``RELAY_PRESENCE_TTL`` and expires after it: one command per beat, however many connections.
  Each entry is stored with the epoch it was written in, and counts only while it matches the
  heartbeat's. A beat that finds its key changed or gone (expired during an outage, Redis
  restarted or failed over, losing writes either way) starts a new epoch: every entry written
  before stops counting at once, whatever Redis kept or lost, and every entry the process holds
  is joined again. The writer sends nothing before the first beat went through, or a list made
  meanwhile would take the fresh entries for a dead process's.
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

_Key = tuple[str, str]  # (channel, client)


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
        self._epoch = 1
        # entry of each channel a client joined here, by client: a dict per connection, not a
        # (channel, client) tuple per subscription (85 bytes each, with its slot)
        self._held: dict[str, dict[str, str]] = {}
        # the last change per key, oldest first, each with its number (``_made`` counts them)
        self._queue: dict[_Key, tuple[int, PresenceChange]] = {}
        self._made = 0
        self._written = 0  # every change numbered up to this is in Redis (or superseded)
        self._listing: list[int] = []  # where each list running now began (``_written`` then)
        self._recent: deque[tuple[int, PresenceChange]] = deque()  # written while a list ran
        self._sending: set[_Key] = set()  # the keys of the batch being written
        self._queued = asyncio.Event()
        self._empty = asyncio.Event()  # nothing queued: a closing instance waits for it
        self._empty.set()
        self._beating = asyncio.Event()  # the heartbeat went through once: entries may be written
        self._tasks: list[asyncio.Task[None]] = []

    def client_id(self) -> str:
        """A new connection's id, unique across instances and restarts."""
        return f"{self.boot}.{next(self._numbers)}"

    def join(self, channel: str, client: str, entry: str) -> None:
        joined = self._held.get(client)
        if joined is None:
            joined = self._held[client] = {}
        joined[channel] = entry
        self._change(PresenceChange(channel, client, entry, frames.joined(channel, entry), True, self._epoch))

    def leave(self, channel: str, client: str) -> None:
        joined = self._held.get(client)
        if joined is None:
            return
        entry = joined.pop(channel, None)
        if not joined:
            del self._held[client]
        if entry is not None:
            self._change(PresenceChange(channel, client, entry, frames.left(channel, entry), False))

    async def clients(self, channel: str) -> list[str]:
        """Every entry on the channel, on every instance (this process's changes made since the
        list began included, written or not); raises BrokerError."""
        began = self._written
        self._listing.append(began)
        try:
            present = await self._store.presence_list(channel)
        finally:
            self._listing.remove(began)
        since = [
            (n, c) for n, c in (*self._recent, *self._queue.values()) if n > began and c.channel == channel
        ]
        for _, change in sorted(since, key=lambda item: item[0]):
            if change.join:
                present[change.client] = change.entry
            else:
                present.pop(change.client, None)
        oldest = min(self._listing, default=self._written)
        while self._recent and self._recent[0][0] <= oldest:
            self._recent.popleft()
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
        """Send the leaves still queued (the drain closed every connection), then end the
        heartbeat, so that whatever was not written stops counting at once; within ``within``
        seconds, after which what is left expires with the heartbeat, within the TTL."""
        if self._beating.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), within)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._beating.is_set():
            with contextlib.suppress(BrokerError, TimeoutError):
                await asyncio.wait_for(self._store.presence_end(self.boot), within)

    def _change(self, change: PresenceChange) -> None:
        key = (change.channel, change.client)
        queued = self._queue.pop(key, None)  # superseded: the newer one goes last
        if queued is not None and queued[1].join and not change.join and key not in self._sending:
            self._empty_if_done()
            return  # a join never sent needs no leave
        self._made += 1
        self._queue[key] = (self._made, change)
        self._queued.set()
        self._empty.clear()

    async def _beat(self) -> None:
        backoff = Backoff(cap=self._ttl / 3)
        ttl_ms = int(self._ttl * 1000)
        expected: str | None = None  # what the key holds if Redis kept it
        while True:
            value = f"{self._epoch} {self._name}"
            try:
                previous = await self._store.presence_beat(self.boot, value, ttl_ms)
            except BrokerError as exc:
                delay = backoff.failed()
                log.warning("presence heartbeat failed (%s); next try in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if expected is not None and previous != expected:
                self._new_epoch()
                continue  # beat again at once, with it
            expected = value
            self._beating.set()
            await asyncio.sleep(self._ttl / 3)

    def _new_epoch(self) -> None:
        """Redis lost the heartbeat (and perhaps entries): what was written before stops counting,
        and every entry held here is written again."""
        self._epoch += 1
        log.warning(
            "presence heartbeat was lost (Redis restarted, failed over, or away over %gs):"
            " writing %d entries again",
            self._ttl,
            sum(len(joined) for joined in self._held.values()),
        )
        for client, joined in self._held.items():
            for channel, entry in joined.items():
                self._change(
                    PresenceChange(channel, client, entry, frames.joined(channel, entry), True, self._epoch)
                )

    async def _write(self) -> None:
        await self._beating.wait()
        backoff = Backoff()
        queue = self._queue
        while True:
            if not queue:
                self._queued.clear()
                await self._queued.wait()
            batch = list(itertools.islice(queue.items(), _BATCH))
            self._sending = {key for key, _ in batch}
            try:
                refused = await self._store.presence_change([change for _, (_, change) in batch])
            except BrokerError as exc:
                self._sending = set()
                delay = backoff.failed()
                log.warning(
                    "presence: %d change(s) not written (%s); retrying in %.1fs", len(batch), exc, delay
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self._sending = set()
            self._written_out(batch, refused)

    def _written_out(
        self, batch: list[tuple[_Key, tuple[int, PresenceChange]]], refused: list[str | None]
    ) -> None:
        for (key, numbered), error in zip(batch, refused, strict=True):
            if self._queue.get(key) is numbered:  # not superseded meanwhile
                del self._queue[key]
            if error is not None:
                log.error("presence: Redis refused a change of channel %r for good: %s", key[0], error)
            if self._listing:
                self._recent.append(numbered)
        self._written = max(self._written, batch[-1][1][0])
        self._empty_if_done()

    def _empty_if_done(self) -> None:
        if not self._queue:
            self._empty.set()
