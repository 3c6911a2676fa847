"""The client library (app.client) against real instances: resume, gaps, no duplicates."""

from __future__ import annotations

import asyncio
import signal

import pytest
import redis

from app.client import ClientError, Consumer, Gap, Message, Producer, Relay
from tests.conftest import RelayFactory
from tests.support import events_of, publish_all, stream_ids, timeout, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.processes]


async def take(
    consumer: Consumer, count: int, into: list[Message | Gap], more: asyncio.Event | None = None
) -> None:
    """Iterate until ``count`` events are in ``into``; ``more`` is set at each one."""
    async with events_of(consumer) as events:
        async for event in events:
            into.append(event)
            if more is not None:
                more.set()
            if len(into) >= count:
                return


async def holding(into: list[Message | Gap], count: int, more: asyncio.Event) -> None:
    """Wait until ``into`` holds ``count`` events."""
    async with asyncio.timeout(timeout(10)):
        while len(into) < count:
            more.clear()
            await more.wait()


async def test_the_consumer_resumes_across_an_instance_restart(relay: RelayFactory) -> None:
    a = relay(drain_grace="0").start()
    consumer = Consumer(a.http, "restarts", max_backoff=0.3)
    got: list[Message | Gap] = []
    more = asyncio.Event()
    reading = asyncio.create_task(take(consumer, 20, got, more))
    await asyncio.wait_for(consumer.subscribed(), timeout(10))
    first = await publish_all(f"{a.ws}/ws/producer/restarts", list(range(10)))
    await holding(got, 10, more)
    a.signal(signal.SIGTERM)
    await asyncio.to_thread(a.wait_exit, 10)
    second = await asyncio.to_thread(lambda: a.start())  # the same port: the consumer finds it again
    assert second is a
    later = await publish_all(f"{a.ws}/ws/producer/restarts", list(range(10, 20)))
    await asyncio.wait_for(reading, timeout(20))
    assert [e.id for e in got if isinstance(e, Message)] == first + later
    assert consumer.reconnects >= 1


async def test_gaps_reach_the_caller(relay: RelayFactory) -> None:
    a = relay(stream_maxlen="10").start()
    ids = await publish_all(f"{a.ws}/ws/producer/short", list(range(100)))
    got: list[Message | Gap] = []
    await asyncio.wait_for(take(Consumer(a.http, "short", from_=ids[0]), 2, got), timeout(10))
    gap, message = got
    assert isinstance(gap, Gap)
    assert isinstance(message, Message)
    assert (gap.after, gap.next) == (ids[0], message.id)


async def test_the_producer_stores_each_message_once_across_a_restart(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay(drain_grace="0").start()
    async with Producer(a.http, "once", window=8, max_backoff=0.2) as producer:
        tasks = [asyncio.create_task(producer.publish({"n": n})) for n in range(200)]
        await asyncio.sleep(0)  # let the first requests go out
        a.signal(signal.SIGKILL)  # answers lost mid-flight
        await asyncio.to_thread(a.wait_exit, 10)
        await asyncio.to_thread(a.start)
        ids = await asyncio.wait_for(asyncio.gather(*tasks), timeout(30))
    stored = stream_ids(redis_client, f"{prefix}:{{once}}")
    assert len(ids) == len(set(ids)) == 200
    assert sorted(stored) == sorted(ids)  # no duplicate from a resend


async def test_a_refusal_is_an_error_not_a_retry(relay: RelayFactory) -> None:
    a = relay().start()
    with pytest.raises(ClientError, match="invalid_channel"):
        await asyncio.wait_for(take(Consumer(a.http, "bad name"), 1, []), timeout(5))
    async with Producer(a.http, "bad name") as producer:
        with pytest.raises(ClientError, match="invalid_channel"):
            await producer.publish(1)


async def test_a_group_consumer_acks_as_it_goes_even_with_prefetch_one_and_across_a_restart(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay(drain_grace="0", group_claim_idle_ms="300").start()
    ids = await publish_all(f"{a.ws}/ws/producer/work", list(range(6)))
    consumer = Consumer(a.http, "work", from_="0", group="g", prefetch=1, max_backoff=0.3)
    got: list[str] = []
    async with asyncio.timeout(timeout(30)), events_of(consumer) as events:
        async for event in events:
            assert isinstance(event, Message)
            got.append(event.id)
            if len(got) == 3:  # the instance restarts while the third is in hand
                a.signal(signal.SIGTERM)
                await asyncio.to_thread(a.wait_exit, 10)
                await asyncio.to_thread(a.start)
            if set(got) >= set(ids):
                break
    # with prefetch 1 nothing would come after the first without its ack; the one held when the
    # instance went away comes again (at-least-once), nothing is lost
    assert set(got) == set(ids)
    assert len(got) <= len(ids) + 1
    assert consumer.reconnects >= 1


async def test_a_consumer_the_caller_is_done_with_closes_normally(relay: RelayFactory) -> None:
    a = relay().start()
    left, cancelled = Consumer(a.http, "done"), Consumer(a.http, "done")
    async with events_of(left) as events:  # left: the loop is left, the generator closed
        first = asyncio.create_task(anext(events))
        reading = asyncio.create_task(take(cancelled, 2, []))
        await asyncio.wait_for(asyncio.gather(left.subscribed(), cancelled.subscribed()), timeout(10))
        await publish_all(f"{a.ws}/ws/producer/done", [1])
        assert isinstance(await asyncio.wait_for(first, timeout(10)), Message)
        reading.cancel()  # cancelled: its task, while it waits for a second message
        with pytest.raises(asyncio.CancelledError):
            await reading
    async with Relay(a.http) as multiplexed:  # and a /ws socket closed by its caller
        await asyncio.wait_for(multiplexed.connected(), timeout(10))

    # each says so to the relay with 1000: what it logs is not an error of theirs
    def closures() -> list[str]:
        return [line for line in a.log_path.read_text().splitlines() if "closed by client" in line]

    await asyncio.to_thread(wait_until, lambda: len(closures()) == 4, 10, "four closures (a producer's too)")
    assert all("closed by client, code 1000," in line for line in closures()), closures()
