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
        self.beat_value: str | None = None
        self.beat_args: set[tuple[str, str, int]] = set()
        self.attempts: list[tuple[int, list[PresenceChange]]] = []  # (changes applied before, batch)
        self.applied: list[PresenceChange] = []
        self.log: list[str] = []  # "beat" (one that went through) and "write", as they happened
        self.failures: list[BrokerError] = []  # raised by the next writes, in turn
        self.gate: asyncio.Event | None = None  # when set, writes wait for it
        self.list_gate: asyncio.Event | None = None  # when set, lists wait for it (having read)
        self.listing = 0
        self.cancelled = 0
        self._changed = asyncio.Condition()

    async def presence_beat(self, boot: str, value: str, ttl_ms: int) -> str | None:
        """``True`` from the test: the key was kept (its value is returned); ``False``: lost."""
        self.beat_args.add((boot, value, ttl_ms))
        self.beat_calls += 1
        await self._notify()
        result = await self.beat_results.get()
        if isinstance(result, BrokerError):
            raise result
        self.log.append("beat")
        previous, self.beat_value = self.beat_value if result else None, value
        return previous

    async def presence_end(self, boot: str) -> None:
        self.log.append("end")

    async def presence_change(self, changes: Sequence[PresenceChange]) -> list[str | None]:
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
        return [None] * len(changes)

    async def presence_list(self, channel: str) -> dict[str, str]:
        """What is applied when it is called; returned once ``list_gate`` (if any) opens."""
        present: dict[str, str] = {}
        for change in self.applied:
            if change.channel == channel and change.join:
                present[change.client] = change.entry
            elif change.channel == channel:
                present.pop(change.client, None)
        if self.list_gate is not None:
            self.listing += 1
            await self._notify()
            await self.list_gate.wait()
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


def joined(channel: str, client: str, epoch: int = 1) -> PresenceChange:
    return PresenceChange(channel, client, entry(client), frames.joined(channel, entry(client)), True, epoch)


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
        assert store.beat_args == {(presence.boot, "1 unit", int(TTL * 1000))}
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
            presence.leave(f"d{n % 7}", f"b.{n}")  # never joined there: nothing to leave
        for n in range(601, 1001):
            presence.join(f"d{n % 7}", f"b.{n}", entry(f"b.{n}"))
            expected.append(joined(f"d{n % 7}", f"b.{n}"))
        assert presence.queued == 1001  # the first, being sent, included
        store.gate.set()
        await store.until(lambda: len(store.applied) == 1001, "every change written")
    assert store.applied == expected
    assert [len(batch) for _, batch in store.attempts] == [1, 512, 488]  # _BATCH per round trip


async def test_a_leave_cancels_a_join_not_sent_yet_and_follows_one_being_sent() -> None:
    store = FakeStore()
    async with tracking(store) as presence:
        await store.beat_results.put(True)
        store.gate = asyncio.Event()
        presence.join("c", "b.1", entry("b.1"))
        await store.until(lambda: len(store.attempts) == 1, "the first write, held")
        for _ in range(1000):  # a client subscribing and unsubscribing in a loop meanwhile
            presence.join("c", "b.2", entry("b.2"))
            presence.leave("c", "b.2")
        presence.leave("c", "b.1")  # its join is being sent: the leave must follow it
        assert presence.queued == 1
        store.gate.set()
        await store.until(lambda: len(store.applied) == 2, "the join, then its leave")
        assert presence.queued == 0
    assert store.applied == [joined("c", "b.1"), left("c", "b.1")]


async def test_a_failing_store_is_retried_and_nothing_is_lost_or_reordered() -> None:
    store = FakeStore()
    store.failures = [BrokerUnavailable("down"), StorageError("LOADING")]
    async with tracking(store) as presence:
        await store.beat_results.put(True)
        store.gate = asyncio.Event()
        presence.join("c", "b.1", entry("b.1"))
        presence.join("c", "b.2", entry("b.2"))
        await store.until(lambda: len(store.attempts) == 1, "the first write, held")
        # more changes while the batch is out: they queue behind it
        presence.join("d", "b.1", entry("b.1"))
        presence.leave("c", "b.2")  # its join is in the batch: it follows, last
        store.gate.set()
        expected = [joined("c", "b.1"), joined("c", "b.2"), joined("d", "b.1"), left("c", "b.2")]
        await store.until(lambda: len(store.applied) == 3, "every change written")
        assert presence.queued == 0
    # the failed batch was tried again as it stood (its join of b.2 superseded by the leave)
    assert [batch for _, batch in store.attempts[:3]] == [
        expected[:2],
        expected[:1] + expected[2:],
        expected[:1] + expected[2:],
    ]
    assert store.applied == [expected[0], expected[2], expected[3]]


async def test_a_heartbeat_that_finds_its_key_lost_joins_the_held_entries_again_in_a_new_epoch() -> None:
    store = FakeStore()
    async with tracking(store) as presence:
        await store.beat_results.put(False)  # the first: a fresh key
        presence.join("c1", "b.1", entry("b.1"))
        presence.join("c2", "b.2", entry("b.2"))
        await store.until(lambda: len(store.applied) == 2, "the joins written")
        presence.join("c1", "b.3", entry("b.3"))
        await store.until(lambda: len(store.applied) == 3, "the third join written")
        presence.leave("c1", "b.3")
        await store.until(lambda: len(store.applied) == 4, "its leave written")

        await store.beat_results.put(True)  # kept: nothing to do
        await store.until(lambda: store.beat_calls == 3, "the next heartbeat")
        assert (len(store.applied), presence.queued) == (4, 0)

        # lost (expired in an outage, or Redis restarted): what it held may be gone or stale
        await store.beat_results.put(False)
        await store.until(lambda: len(store.applied) == 6, "the joins again")
        assert store.applied[4:] == [joined("c1", "b.1", 2), joined("c2", "b.2", 2)]  # held ones only
        await store.until(lambda: store.beat_calls == 4, "a beat at once, in the new epoch")
        assert (presence.boot, "2 unit", int(TTL * 1000)) in store.beat_args
        assert list((await store.presence_list("c1")).values()) == [entry("b.1")]
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
        assert store.log[-2:] == ["write", "end"]  # then the heartbeat ends: nothing else counts


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


async def test_a_list_counts_the_changes_made_here_since_it_began_written_or_not() -> None:
    """Redis answers a list with what it held when it read; a change this process wrote meanwhile
    (or has not written yet) is applied on top: a connection sees its own join, and not itself
    after its leave, at once."""
    store = FakeStore()
    async with tracking(store) as presence:
        await store.beat_results.put(True)
        presence.join("c", "b.0", entry("b.0"))
        await store.until(lambda: len(store.applied) == 1, "the first join written")
        store.gate, store.list_gate = asyncio.Event(), asyncio.Event()
        presence.join("c", "b.1", entry("b.1"))  # its write held
        presence.leave("c", "b.0")
        await store.until(lambda: len(store.attempts) == 2, "the write, held")
        listing = asyncio.ensure_future(presence.clients("c"))
        await store.until(lambda: store.listing == 1, "the list, having read")  # b.0 only
        store.gate.set()
        await store.until(lambda: len(store.applied) == 3, "the join and leave written meanwhile")
        assert presence.queued == 0
        store.list_gate.set()
        assert await asyncio.wait_for(listing, timeout(5)) == [entry("b.1")]
        assert await presence.clients("c") == [entry("b.1")]  # and with nothing pending
