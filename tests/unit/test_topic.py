"""A topic's states and hole filling, against a broker that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from app.broker.interface import Page
from app.errors import BrokerError, BrokerUnavailable
from app.fanout.hub import Hub
from app.fanout.subscription import Subscription
from app.fanout.topic import HELD_ENTRIES, Topic, TopicState
from app.protocol import names, streamid
from app.protocol.streamid import StreamId
from app.wakeup import Wakeup
from tests.support import timeout


class FakeBroker:
    """An in-memory stream; reads can be made to fail or be held, ``follow`` can be held."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self.failures = 0
        self.follow_gate: asyncio.Event | None = None
        self.follow_failure: Exception | None = None  # raised by follow(), after the gate
        self.following = asyncio.Event()
        self.read_gate: asyncio.Event | None = None
        self.reading = asyncio.Event()  # set when a read begins
        self.reads = 0

    def add(self, value: Any) -> str:
        entry_id = f"{len(self.entries) + 1}-0"
        self.entries.append((entry_id, json.dumps(value)))
        return entry_id

    def last(self) -> StreamId:
        return streamid.parse(self.entries[-1][0]) if self.entries else streamid.ZERO

    async def follow(self, channel: str) -> StreamId:
        last = self.last()  # read before the gate: entries added while held come after it
        self.following.set()
        if self.follow_gate is not None:
            await self.follow_gate.wait()
        if self.follow_failure is not None:
            raise self.follow_failure
        return last

    def unfollow(self, channel: str) -> None:
        pass

    async def read(
        self, channel: str, after: StreamId, *, until: StreamId | None, count: int, report_gap: bool = True
    ) -> Page:
        self.reads += 1
        self.reading.set()
        if self.read_gate is not None:
            await self.read_gate.wait()
        if self.failures:
            self.failures -= 1
            raise BrokerUnavailable("down, on purpose")
        chosen = [(i, d) for i, d in self.entries if streamid.parse(i) > after]
        return Page(chosen[:count])

    def announce(self, hub: Hub, value: Any) -> str:
        """Store an entry and announce it as the broker would (after the one before it)."""
        prev = self.entries[-1][0] if self.entries else "0-0"
        entry_id = self.add(value)
        hub.on_announcement("c", prev, [self.entries[-1]])
        return entry_id


def state(topic: Topic) -> TopicState:
    """The topic's state now (a call: mypy must not assume it unchanged across an await)."""
    return topic.state


def topic_of(hub: Hub) -> Topic:
    topic = hub.topic("c")
    assert topic is not None
    return topic


async def follower(hub: Hub, channel: str = "c") -> tuple[Any, Wakeup]:
    wake = Wakeup()
    sub = await hub.subscribe(channel, names.LATEST, wake.set)
    return sub, wake


async def received(sub: Any, wake: Wakeup, count: int) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(timeout(5)):
        while len(out) < count:
            batch = await sub.take()
            if not batch:
                await wake.wait()
            out.extend(json.loads(m.text) for m in batch)
    return [frame.get("data", frame) for frame in out]  # a message's data, any other frame whole


async def test_a_failed_re_read_is_tried_again() -> None:
    broker = FakeBroker()
    hub = Hub(broker, buffer=100)
    sub, wake = await follower(hub)
    broker.add("missed while Pub/Sub was down")
    broker.failures = 1
    hub.on_resubscribed()
    assert await received(sub, wake, 1) == ["missed while Pub/Sub was down"]
    assert broker.reads == 2


async def test_a_reconnect_while_a_channel_is_being_followed_is_not_lost() -> None:
    broker = FakeBroker()
    broker.follow_gate = asyncio.Event()
    hub = Hub(broker, buffer=100)
    subscribing = asyncio.create_task(follower(hub))
    await asyncio.wait_for(broker.following.wait(), timeout(5))  # follow() has its position and waits
    missed = broker.add("published while Pub/Sub was down, never announced")
    hub.on_resubscribed()  # Pub/Sub came back while the channel was still being followed
    assert state(topic_of(hub)) is TopicState.RESYNCING  # owed, though the position is not known yet
    broker.follow_gate.set()
    sub, wake = await asyncio.wait_for(subscribing, timeout(5))
    # whatever position the consumer got, everything after it arrives without another publish
    owed = [json.loads(data) for entry_id, data in broker.entries if streamid.parse(entry_id) > sub.last]
    assert await received(sub, wake, len(owed)) == owed
    assert sub.last >= streamid.parse(missed)


async def test_an_announcement_beyond_what_the_stream_holds_is_delivered_not_waited_on() -> None:
    broker = FakeBroker()
    hub = Hub(broker, buffer=100)
    sub, wake = await follower(hub)
    broker.add("kept")
    # announced after entry 50-0, which the stream no longer has (lost in a failover, or XDEL)
    hub.on_announcement("c", "50-0", [("51-0", '"after a lost entry"')])
    assert await received(sub, wake, 3) == [
        "kept",
        {"type": "gap", "channel": "c", "from": "1-0", "next": "51-0"},  # the loss is said, not only logged
        "after a lost entry",
    ]


async def test_a_topic_holds_what_is_announced_while_it_starts_then_follows() -> None:
    broker = FakeBroker()
    broker.follow_gate = asyncio.Event()
    hub = Hub(broker, buffer=100)
    subscribing = asyncio.create_task(follower(hub))
    await asyncio.wait_for(broker.following.wait(), timeout(5))
    assert state(topic_of(hub)) is TopicState.STARTING
    broker.announce(hub, "announced while starting")  # held: the position is not known yet
    broker.follow_gate.set()
    sub, wake = await asyncio.wait_for(subscribing, timeout(5))
    start = sub.last  # the subscribed position: the held entry, or just before it
    broker.announce(hub, "live")
    owed = [json.loads(data) for entry_id, data in broker.entries if streamid.parse(entry_id) > start]
    assert await received(sub, wake, len(owed)) == owed
    assert owed[-1] == "live"
    assert (state(topic_of(hub)), broker.reads) == (TopicState.FOLLOWING, 0)  # held, not read again


async def test_an_announcement_after_a_hole_fills_it_from_the_stream_then_follows() -> None:
    broker = FakeBroker()
    hub = Hub(broker, buffer=100)
    sub, wake = await follower(hub)
    broker.add("never announced")  # Pub/Sub lost it
    broker.read_gate = asyncio.Event()
    broker.announce(hub, "announced after it")
    assert state(topic_of(hub)) is TopicState.FILLING
    broker.announce(hub, "held while filling")
    broker.read_gate.set()
    assert await received(sub, wake, 3) == ["never announced", "announced after it", "held while filling"]
    assert (state(topic_of(hub)), broker.reads) == (TopicState.FOLLOWING, 1)


async def test_a_resync_is_owed_until_a_read_succeeds() -> None:
    broker = FakeBroker()
    hub = Hub(broker, buffer=100)
    sub, wake = await follower(hub)
    broker.add("missed while Pub/Sub was down")
    broker.read_gate, broker.failures = asyncio.Event(), 1
    hub.on_resubscribed()
    topic = topic_of(hub)
    assert state(topic) is TopicState.RESYNCING
    await asyncio.wait_for(broker.reading.wait(), timeout(5))
    assert state(topic) is TopicState.FILLING  # the read began
    broker.reading.clear()
    broker.read_gate.set()  # and fails
    await asyncio.wait_for(broker.reading.wait(), timeout(5))  # tried again, after a backoff
    assert await received(sub, wake, 1) == ["missed while Pub/Sub was down"]
    assert (state(topic), broker.reads) == (TopicState.FOLLOWING, 2)


async def test_a_resync_asked_for_during_a_read_reads_again() -> None:
    broker = FakeBroker()
    hub = Hub(broker, buffer=100)
    sub, wake = await follower(hub)
    broker.read_gate = asyncio.Event()
    hub.on_resubscribed()
    await asyncio.wait_for(broker.reading.wait(), timeout(5))
    broker.add("stored after that read began, never announced")
    hub.on_resubscribed()  # Pub/Sub dropped again meanwhile
    topic = topic_of(hub)
    assert state(topic) is TopicState.RESYNCING
    broker.read_gate.set()
    assert await received(sub, wake, 1) == ["stored after that read began, never announced"]
    assert (state(topic), broker.reads) == (TopicState.FOLLOWING, 2)


async def test_a_topic_whose_last_consumer_left_is_closed_and_delivers_nothing() -> None:
    broker = FakeBroker()
    hub = Hub(broker, buffer=100)
    sub, _ = await follower(hub)
    topic = topic_of(hub)
    hub.unsubscribe(sub)
    assert state(topic) is TopicState.CLOSED
    assert hub.topic("c") is None
    broker.announce(hub, "after the end")  # no topic to tell
    topic.on_announcement(streamid.ZERO, [("9-0", '"late"')])
    topic.resync()
    assert (state(topic), topic.last, sub.buffered, broker.reads) == (TopicState.CLOSED, (0, 0), 0, 0)


async def test_more_held_than_a_topic_keeps_is_let_go_and_read_again_from_the_stream() -> None:
    broker = FakeBroker()
    hub = Hub(broker, buffer=2 * HELD_ENTRIES)
    sub, wake = await follower(hub)
    broker.add("never announced")
    broker.read_gate = asyncio.Event()
    broker.announce(hub, "after a hole")  # FILLING: the read waits at the gate
    topic = topic_of(hub)
    await asyncio.wait_for(broker.reading.wait(), timeout(5))
    prev = broker.entries[-1][0]
    start = len(broker.entries)
    for n in range(HELD_ENTRIES):
        broker.add(n)
    hub.on_announcement("c", prev, broker.entries[start:])  # more than a topic holds
    assert state(topic) is TopicState.RESYNCING
    broker.read_gate.set()
    got = await received(sub, wake, 2 + HELD_ENTRIES)
    assert got == ["never announced", "after a hole", *range(HELD_ENTRIES)]
    assert state(topic) is TopicState.FOLLOWING


async def test_a_subscription_attached_soon_begins_once_the_position_is_known_and_at_once_after() -> None:
    broker = FakeBroker()
    broker.add("before anyone followed")
    broker.follow_gate = asyncio.Event()
    hub = Hub(broker, buffer=100)
    first_wake, second_wake = Wakeup(), Wakeup()
    first, second = Subscription("c", first_wake), Subscription("c", second_wake)
    heard: asyncio.Future[BrokerError | None] = asyncio.get_running_loop().create_future()
    hub.attach_soon(first, names.LATEST, heard.set_result)
    await asyncio.wait_for(broker.following.wait(), timeout(5))
    assert not heard.done()  # the position is not known yet: nothing is said, and nothing delivered
    broker.follow_gate.set()
    assert await asyncio.wait_for(heard, timeout(5)) is None
    assert first.last == streamid.parse("1-0")  # from the channel's end when it was followed
    said: list[BrokerError | None] = []
    hub.attach_soon(second, names.LATEST, said.append)
    assert said == [None]  # the channel is followed: begun before attach_soon returns
    broker.announce(hub, "live")
    assert await received(first, first_wake, 1) == ["live"]
    assert await received(second, second_wake, 1) == ["live"]


async def test_a_subscription_attached_soon_to_a_channel_that_cannot_be_followed_hears_why() -> None:
    broker = FakeBroker()
    broker.follow_failure = BrokerUnavailable("down, on purpose")
    hub = Hub(broker, buffer=100)
    heard: asyncio.Future[BrokerError | None] = asyncio.get_running_loop().create_future()
    hub.attach_soon(Subscription("c", Wakeup()), names.LATEST, heard.set_result)
    error = await asyncio.wait_for(heard, timeout(5))
    assert isinstance(error, BrokerError)
    assert "down, on purpose" in str(error)
    assert hub.topics == 0  # nothing is left following the channel for nobody
