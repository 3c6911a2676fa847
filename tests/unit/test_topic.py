"""The topic's hole filling against a broker that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from app import protocol, streamid
from app.broker import Page
from app.errors import BrokerUnavailable
from app.hub import Hub
from app.streamid import StreamId
from app.wakeup import Wakeup
from tests.support import timeout


class FakeBroker:
    """An in-memory stream; reads can be made to fail, ``follow`` can be held."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self.failures = 0
        self.follow_gate: asyncio.Event | None = None
        self.following = asyncio.Event()
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
        return last

    def unfollow(self, channel: str) -> None:
        pass

    async def read(
        self, channel: str, after: StreamId, *, until: StreamId | None, count: int, report_gap: bool = True
    ) -> Page:
        self.reads += 1
        if self.failures:
            self.failures -= 1
            raise BrokerUnavailable("down, on purpose")
        chosen = [(i, d) for i, d in self.entries if streamid.parse(i) > after]
        return Page(chosen[:count])


async def follower(hub: Hub, channel: str = "c") -> tuple[Any, Wakeup]:
    wake = Wakeup()
    sub = await hub.subscribe(channel, protocol.LATEST, wake.set)
    return sub, wake


async def received(sub: Any, wake: Wakeup, count: int) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(timeout(5)):
        while len(out) < count:
            batch = await sub.take()
            if not batch:
                await wake.wait()
            out.extend(json.loads(m.asgi["text"]) for m in batch)
    return [frame.get("data", frame) for frame in out]  # a message's data, any other frame whole


async def test_a_failed_re_read_is_tried_again() -> None:
    broker = FakeBroker()
    hub = Hub(broker, buffer=100)  # type: ignore[arg-type]
    sub, wake = await follower(hub)
    broker.add("missed while Pub/Sub was down")
    broker.failures = 1
    hub.on_resubscribed()
    assert await received(sub, wake, 1) == ["missed while Pub/Sub was down"]
    assert broker.reads == 2


async def test_a_reconnect_while_a_channel_is_being_followed_is_not_lost() -> None:
    broker = FakeBroker()
    broker.follow_gate = asyncio.Event()
    hub = Hub(broker, buffer=100)  # type: ignore[arg-type]
    subscribing = asyncio.create_task(follower(hub))
    await asyncio.wait_for(broker.following.wait(), timeout(5))  # follow() has its position and waits
    missed = broker.add("published while Pub/Sub was down, never announced")
    hub.on_resubscribed()  # Pub/Sub came back while the channel was still being followed
    broker.follow_gate.set()
    sub, wake = await asyncio.wait_for(subscribing, timeout(5))
    # whatever position the consumer got, everything after it arrives without another publish
    owed = [json.loads(data) for entry_id, data in broker.entries if streamid.parse(entry_id) > sub.last]
    assert await received(sub, wake, len(owed)) == owed
    assert sub.last >= streamid.parse(missed)


async def test_an_announcement_beyond_what_the_stream_holds_is_delivered_not_waited_on() -> None:
    broker = FakeBroker()
    hub = Hub(broker, buffer=100)  # type: ignore[arg-type]
    sub, wake = await follower(hub)
    broker.add("kept")
    # announced after entry 50-0, which the stream no longer has (lost in a failover, or XDEL)
    hub.on_announcement("c", "50-0", [("51-0", '"after a lost entry"')])
    assert await received(sub, wake, 3) == [
        "kept",
        {"type": "gap", "from": "1-0", "next": "51-0"},  # the loss is said, not only logged
        "after a lost entry",
    ]
