"""One process's presence (app/presence/tracker.py) against an in-memory PresenceStore: order,
batching, retries, the first heartbeat, an expired heartbeat, and close()."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence

from app.broker.interface import PresenceChange
from app.errors import BrokerError, BrokerUnavailable, StorageError
from app.presence.tracker import Presence, entry_of
from app.protocol import frames
from app.settings import Settings
from tests.support import timeout

TTL = 0.3  # a heartbeat every 0.1 s


class FakeStore:
    """A PresenceStore in memory. Each heartbeat waits for the test to hand it its result (or an
    exception to raise); writes may be held (``gate``) or fail (``failures``)."""

    def __init__(self) -> None:
        self.beat_results: asyncio.Queue[bool | BrokerError] = asyncio.Queue()
        self.beat_calls = 0
        self.beat_args: set[tuple[str, str, int]] = set()
        self.attempts: list[tuple[int, list[PresenceChange]]] = []  # (changes applied before, batch)
        self.applied: list[PresenceChange] = []
        self.log: list[str] = []  # "beat" (one that went through) and "write", as they happened
        self.failures: list[BrokerError] = []  # raised by the next writes, in turn
        self.gate: asyncio.Event | None = None  # when set, writes wait for it
        self.cancelled = 0
        self._changed = asyncio.Condition()

    async def presence_beat(self, boot: str, name: str, ttl_ms: int) -> bool:
        self.beat_args.add((boot, name, ttl_ms))
        self.beat_calls += 1
        await self._notify()
        result = await self.beat_results.get()
        if isinstance(result, BrokerError):
            raise result
        self.log.append("beat")
        return result

    async def presence_change(self, changes: Sequence[PresenceChange]) -> None:
        self.attempts.append((len(self.applied), list(changes)))
        await self._notify()
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.failures:
            raise self.failures.pop(0)
        self.applied.extend(changes)
        self.log.append("write")
        await self._notify()

    async def presence_list(self, channel: str) -> dict[str, str]:
        present: dict[str, str] = {}
        for change in self.applied:
            if change.channel == channel and change.join:
                present[change.client] = change.entry
            elif change.channel == channel:
                present.pop(change.client, None)
        return present

    async def until(self, predicate: Callable[[], bool], what: str, within: float = 5) -> None:
        try:
            async with asyncio.timeout(timeout(within)), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout(within):.1f}s waiting for {what}") from None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def settings() -> Settings:
    """No ``.env`` and no ``RELAY_`` variable changes what these tests use."""
    return Settings(_env_file=None, instance_name="unit", presence_ttl=TTL)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def tracking(store: FakeStore) -> AsyncIterator[Presence]:
    presence = Presence(store, settings())
    presence.start()
    try:
        yield presence
    finally:
        await presence.close(0)


def entry(client: str) -> str:
    return entry_of(client, f"user-of-{client}", {"n": client})


def joined(channel: str, client: str) -> PresenceChange:
    return PresenceChange(channel, client, entry(client), frames.joined(channel, entry(client)), join=True)


def left(channel: str, client: str) -> PresenceChange:
    return PresenceChange(channel, client, entry(client), frames.left(channel, entry(client)), join=False)


def test_connection_ids_name_their_process() -> None:
    one, other = Presence(FakeStore(), settings()), Presence(FakeStore(), settings())
    assert [one.client_id(), one.client_id()] == [f"{one.boot}.1", f"{one.boot}.2"]
    assert other.boot != one.boot
    assert other.client_id() == f"{other.boot}.1"


async def test_nothing_is_written_before_the_first_heartbeat_went_through() -> None:
    store = FakeStore()
    async with tracking(store) as presence:
        presence.join("c", "b.1", entry("b.1"))
        presence.join("d", "b.2", entry("b.2"))
        await store.until(lambda: store.beat_calls == 1, "the first heartbeat")
        await store.beat_results.put(BrokerUnavailable("down"))
        await store.until(lambda: store.beat_calls == 2, "the heartbeat tried again")
        assert store.attempts == []  # the writer had the backoff's time, and waited
        assert presence.queued == 2
        await store.beat_results.put(False)  # a fresh key: the first beat finds none, as it should
        await store.until(lambda: len(store.applied) == 2, "the joins written")
        assert store.log == ["beat", "write"]
        assert store.beat_args == {(presence.boot, "unit", int(TTL * 1000))}
        assert store.applied == [joined("c", "b.1"), joined("d", "b.2")]  # once each: no join again


async def test_joins_and_leaves_are_written_in_order_in_batches() -> None:
    store = FakeStore()
    async with tracking(store) as presence:
        await store.beat_results.put(True)
        store.gate = asyncio.Event()
        presence.join("c0", "b.0", entry("b.0"))
        await store.until(lambda: len(store.attempts) == 1, "the first write, held")
        expected = [joined("c0", "b.0")]
        for n in range(1, 601):
            presence.join(f"c{n % 7}", f"b.{n}", entry(f"b.{n}"))
            expected.append(joined(f"c{n % 7}", f"b.{n}"))
        for n in range(1, 401):
            presence.leave(f"c{n % 7}", f"b.{n}")
            expected.append(left(f"c{n % 7}", f"b.{n}"))
        presence.leave("c0", "never-joined")  # nothing to leave: nothing written
        presence.leave("c1", "b.1")  # already left
        assert presence.queued == 1001
        store.gate.set()
        await store.until(lambda: len(store.applied) == 1001, "every change written")
    assert store.applied == expected
    assert [len(batch) for _, batch in store.attempts] == [1, 512, 488]  # _BATCH per round trip


async def test_a_failing_store_is_retried_and_nothing_is_lost_or_reordered() -> None:
    store = FakeStore()
    store.failures = [BrokerUnavailable("down"), StorageError("LOADING")]
    async with tracking(store) as presence:
        await store.beat_results.put(True)
        presence.join("c", "b.1", entry("b.1"))
        presence.join("c", "b.2", entry("b.2"))
        await store.until(lambda: len(store.attempts) == 1, "the first write")
        # more changes while Redis refuses: they queue behind the batch that failed
        presence.leave("c", "b.1")
        presence.join("d", "b.1", entry("b.1"))
        presence.leave("c", "b.2")
        expected = [
            joined("c", "b.1"),
            joined("c", "b.2"),
            left("c", "b.1"),
            joined("d", "b.1"),
            left("c", "b.2"),
        ]
        await store.until(lambda: len(store.applied) == len(expected), "every change written")
        assert presence.queued == 0
    assert store.applied == expected
    assert len(store.attempts) >= 3
    for applied_before, batch in store.attempts:  # each try: the oldest changes not yet written
        assert batch == expected[applied_before : applied_before + len(batch)]
    assert [before for before, _ in store.attempts[:3]] == [0, 0, 0]  # the failed batch, tried again


async def test_a_heartbeat_that_finds_its_key_expired_joins_the_held_entries_again() -> None:
    store = FakeStore()
    async with tracking(store) as presence:
        await store.beat_results.put(False)  # the first: a fresh key
        presence.join("c1", "b.1", entry("b.1"))
        presence.join("c2", "b.2", entry("b.2"))
        presence.join("c1", "b.3", entry("b.3"))
        presence.leave("c1", "b.3")
        await store.until(lambda: len(store.applied) == 4, "the changes written")

        await store.beat_results.put(True)  # alive: nothing to do
        await store.until(lambda: store.beat_calls == 3, "the next heartbeat")
        assert (len(store.applied), presence.queued) == (4, 0)

        await store.beat_results.put(False)  # expired: lists may have dropped the entries
        await store.until(lambda: len(store.applied) == 6, "the joins again")
        assert store.applied[4:] == [joined("c1", "b.1"), joined("c2", "b.2")]  # held ones; b.3 left
        assert list((await store.presence_list("c1")).values()) == [entry("b.1")]
        await store.until(lambda: store.beat_calls == 4, "the next heartbeat")
        assert presence.queued == 0


async def test_close_writes_the_queued_leaves_before_it_stops() -> None:
    store = FakeStore()
    async with tracking(store) as presence:  # closed again at the end: a no-op
        await store.beat_results.put(True)
        presence.join("c", "b.1", entry("b.1"))
        presence.join("c", "b.2", entry("b.2"))
        await store.until(lambda: len(store.applied) == 2, "the joins written")
        presence.leave("c", "b.1")  # the drain closed the connections: their leaves are queued
        presence.leave("c", "b.2")
        await asyncio.wait_for(presence.close(timeout(5)), timeout(6))
        assert store.applied[2:] == [left("c", "b.1"), left("c", "b.2")]
        assert presence.queued == 0


async def test_close_gives_up_after_its_bound_when_redis_does_not_answer() -> None:
    store = FakeStore()
    async with tracking(store) as presence:  # closed again at the end: a no-op
        await store.beat_results.put(True)
        presence.join("c", "b.1", entry("b.1"))
        await store.until(lambda: len(store.applied) == 1, "the join written")
        store.gate = asyncio.Event()  # Redis hangs from here on
        presence.leave("c", "b.1")
        await store.until(lambda: len(store.attempts) == 2, "the leave sent")
        started = time.monotonic()
        await asyncio.wait_for(presence.close(0.2), timeout(5))
        took = time.monotonic() - started
        assert 0.2 <= took < 0.2 + timeout(0.5), f"close took {took:.2f}s"
        assert store.cancelled == 1  # the hung write was cancelled, not left behind
        assert len(store.applied) == 1  # the leave is left to the heartbeat's expiry


async def test_close_before_the_first_heartbeat_waits_for_nothing() -> None:
    store = FakeStore()
    async with tracking(store) as presence:  # closed again at the end: a no-op
        presence.join("c", "b.1", entry("b.1"))
        presence.leave("c", "b.1")
        await store.until(lambda: store.beat_calls == 1, "the first heartbeat, unanswered")
        started = time.monotonic()
        await asyncio.wait_for(presence.close(5), timeout(1))  # bound 5 s: it must not wait it out
        assert time.monotonic() - started < timeout(0.5)
        assert store.attempts == []
