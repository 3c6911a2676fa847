"""Batching: per-channel order, one request per channel run, idempotent messages apart."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from app.broker.interface import Published, PublishRequest
from app.errors import BrokerUnavailable, StorageError
from app.ingest.publisher import Publisher, _group, _Item


def item(channel: str, data: str, key: str | None = None) -> _Item:
    return _Item(channel, data, key, asyncio.get_running_loop().create_future())


async def test_grouping_keeps_channel_order_and_isolates_idempotent_messages() -> None:
    items = [item("a", "1"), item("b", "2"), item("a", "3"), item("a", "4", "key"), item("a", "5")]
    requests = _group(items)
    assert [(r.channel, r.data, r.idempotency_key) for r in requests] == [
        ("a", ["1", "3"], None),
        ("b", ["2"], None),
        ("a", ["4"], "key"),
        ("a", ["5"], None),
    ]
    assert [(i.request, i.offset) for i in items] == [(0, 0), (1, 0), (0, 1), (2, 0), (3, 0)]


async def test_large_runs_are_split() -> None:
    items = [item("a", "x" * 100_000) for _ in range(12)]
    requests = _group(items)
    assert len(requests) > 1
    assert sum(len(r.data) for r in requests) == 12


class FakeBroker:
    def __init__(self) -> None:
        self.calls: list[list[PublishRequest]] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None  # when set, publishes wait for it
        self.next_id = 0

    async def publish(self, requests: Sequence[PublishRequest]) -> list[Published | Exception]:
        if self.gate is not None:
            await self.gate.wait()
        self.calls.append(list(requests))
        if self.fail is not None:
            raise self.fail
        out: list[Published | Exception] = []
        for request in requests:
            if request.channel == "broken":
                out.append(StorageError("WRONGTYPE"))
                continue
            ids = [f"{self.next_id + i}-0" for i in range(len(request.data))]
            self.next_id += len(ids)
            out.append(Published(ids))
        return out


async def test_concurrent_submissions_share_a_round_trip_and_get_their_own_ids() -> None:
    broker = FakeBroker()
    publisher = Publisher(broker)
    publisher.start()
    try:
        futures = [publisher.submit("a", str(n)) for n in range(10)] + [publisher.submit("broken", "x")]
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await publisher.close()
    assert len(broker.calls) == 1
    assert results[:10] == [(f"{n}-0", False) for n in range(10)]
    assert isinstance(results[10], StorageError)


async def test_a_failed_round_trip_fails_every_message_in_it() -> None:
    broker = FakeBroker()
    broker.fail = BrokerUnavailable("down")
    publisher = Publisher(broker)
    publisher.start()
    try:
        futures = [publisher.submit("a", str(n)) for n in range(3)]
        for future in futures:
            with pytest.raises(BrokerUnavailable):
                await asyncio.wait_for(future, 5)
    finally:
        await publisher.close()


async def test_too_much_waiting_for_redis_makes_the_publisher_full_until_it_drains() -> None:
    from app.ingest.publisher import MAX_QUEUED_BYTES

    broker = FakeBroker()
    gate = broker.gate = asyncio.Event()
    publisher = Publisher(broker)
    publisher.start()
    try:
        big = "x" * (1024 * 1024)
        futures = [publisher.submit("a", big) for _ in range(MAX_QUEUED_BYTES // len(big) + 2)]
        assert publisher.full
        gate.set()
        await asyncio.wait_for(asyncio.gather(*futures), 10)
        await asyncio.wait_for(publisher.wait_for_room(), 5)
        assert not publisher.full
    finally:
        await publisher.close()
