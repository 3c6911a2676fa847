"""A relay that stops answering without closing (SIGSTOP): the Python client gives up on it within
its bounds, and neither loses nor doubles a message for it. Through the balancer, with other
instances to go to: test_balancer.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time

import pytest
import redis

from app.client import Consumer, Gap, Message, Producer
from tests.conftest import RelayFactory
from tests.support import events_of, eventually, publish_all, timeout

pytestmark = [pytest.mark.redis, pytest.mark.processes]


async def take(consumer: Consumer, into: list[Message | Gap], count: int) -> None:
    async with events_of(consumer) as events:
        async for event in events:
            into.append(event)
            if len(into) >= count:
                return


async def test_a_consumer_gives_up_on_a_silent_relay_within_its_keepalive(relay: RelayFactory) -> None:
    a = relay().start()
    consumer = Consumer(a.http, "quiet", keepalive=1.5, max_backoff=0.3)
    assert consumer.keepalive is not None
    got: list[Message | Gap] = []
    reading = asyncio.create_task(take(consumer, got, 1))
    try:
        await asyncio.wait_for(consumer.subscribed(), timeout(10))
        await asyncio.sleep(2 * consumer.keepalive)  # a window of idle pings, not a wait for an event
        assert consumer.reconnects == 0  # a relay that answers its pings is kept

        a.signal(signal.SIGSTOP)
        try:
            stopped = time.monotonic()

            async def gave_up() -> bool:
                return consumer.reconnects >= 1

            await eventually(gave_up, consumer.keepalive + 2, "the consumer to give up on the relay")
            assert time.monotonic() - stopped < consumer.keepalive + timeout(0.5)
        finally:
            a.signal(signal.SIGCONT)
        # its reconnect reaches the relay once it runs again, and resumes where it was
        ids = await publish_all(f"{a.ws}/ws/producer/quiet", [{"after": 1}])
        await asyncio.wait_for(reading, timeout(15))
        assert [e.id for e in got if isinstance(e, Message)] == ids
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


async def test_a_busy_caller_is_not_taken_for_a_silent_relay(relay: RelayFactory) -> None:
    """The consumer pings only while it waits: frames it has not been asked for yet, piling up
    while the caller works, do not make it give up on the relay."""
    a = relay().start()
    consumer = Consumer(a.http, "busy", keepalive=1.0, max_backoff=0.3)
    assert consumer.keepalive is not None
    events = consumer.__aiter__()
    first = asyncio.ensure_future(anext(events))
    await asyncio.wait_for(consumer.subscribed(), timeout(10))
    ids = await publish_all(f"{a.ws}/ws/producer/busy", list(range(100)))
    got = [await asyncio.wait_for(first, timeout(10))]
    await asyncio.sleep(3 * consumer.keepalive)  # the caller at work, not a wait for an event
    async with asyncio.timeout(timeout(10)):
        got += [await anext(events) for _ in range(99)]
    await events.aclose()
    assert [e.id for e in got if isinstance(e, Message)] == ids
    assert consumer.reconnects == 0


async def test_a_producer_sends_again_after_its_attempt_timeout_and_stores_once(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay().start()
    async with Producer(a.http, "once", attempt_timeout=0.5, max_backoff=0.2) as producer:
        a.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            publishing = asyncio.create_task(producer.publish({"n": 1}))

            async def sent_again() -> bool:
                return producer.retries >= 2

            await eventually(sent_again, 3, "the producer to send the message again")
            assert time.monotonic() - started < timeout(2)  # each attempt waited 0.5 s, not 10
        finally:
            a.signal(signal.SIGCONT)
        entry_id = await asyncio.wait_for(publishing, timeout(10))
    # whichever of its attempts the relay ran once it was running again, one entry: the same key
    entries = redis_client.xrange(f"{prefix}:{{once}}")
    assert [(i, json.loads(f["data"])) for i, f in entries] == [(entry_id, {"n": 1})]  # type: ignore[union-attr]
