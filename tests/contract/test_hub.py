"""Local fan-out over a broker: one frame per message, holes filled from the stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from app.broker.interface import PublishRequest
from app.broker.streams import RedisBroker
from app.errors import BrokerError
from app.fanout.hub import Hub
from app.fanout.sink import Frame
from app.fanout.subscription import Subscription
from app.protocol import names
from app.wakeup import Wakeup
from tests.contract.conftest import raw
from tests.support import timeout

OpenBroker = Callable[..., Any]


class Client:
    """What a consumer connection does with its subscription, minus the socket."""

    def __init__(self) -> None:
        self.wake = Wakeup()
        self.sub: Subscription | None = None

    async def take(self, count: int) -> list[Frame]:
        assert self.sub is not None
        out: list[Frame] = []
        async with asyncio.timeout(timeout(5)):
            while len(out) < count:
                batch = await self.sub.take()
                if not batch:
                    await self.wake.wait()
                out.extend(batch)
        return out


async def attach(hub: Hub, channel: str, position: names.Position = names.LATEST) -> Client:
    client = Client()
    client.sub = await hub.subscribe(channel, position, client.wake.set)
    return client


async def open_hub(open_broker: OpenBroker) -> tuple[Hub, RedisBroker]:
    hubs: list[Hub] = []

    def make_hub(broker: RedisBroker) -> Hub:
        hubs.append(Hub(broker, buffer=100))
        return hubs[0]

    broker = await open_broker(make_hub)
    return hubs[0], broker


def payloads(messages: list[Frame]) -> list[Any]:
    return [json.loads(m.text)["data"] for m in messages]


async def test_each_message_is_built_once_for_every_local_consumer(open_broker: OpenBroker) -> None:
    hub, broker = await open_hub(open_broker)
    clients = [await attach(hub, "c") for _ in range(3)]
    await broker.publish([PublishRequest("c", ["1", "2"])])
    got = [await client.take(2) for client in clients]
    assert all(payloads(messages) == [1, 2] for messages in got)
    assert got[0][0] is got[1][0] is got[2][0]  # the same frame object, not a copy per consumer


async def test_an_entry_added_without_announcement_is_found_at_the_next_one(open_broker: OpenBroker) -> None:
    hub, broker = await open_hub(open_broker)
    client = await attach(hub, "c")
    # a writer that is not the relay (redis-cli XADD): no announcement, so the hub sees a hole
    await raw(broker).xadd(f"{broker.keys.prefix}:{{c}}", {"data": '"silent"'})
    await broker.publish([PublishRequest("c", ['"announced"'])])
    assert payloads(await client.take(2)) == ["silent", "announced"]


async def test_after_a_pubsub_reconnect_missed_entries_are_read(open_broker: OpenBroker) -> None:
    hub, broker = await open_hub(open_broker)
    client = await attach(hub, "c")
    await raw(broker).xadd(f"{broker.keys.prefix}:{{c}}", {"data": '"missed"'})
    hub.on_resubscribed()  # what the broker calls once Pub/Sub is back
    assert payloads(await client.take(1)) == ["missed"]


async def test_channels_are_followed_only_while_they_have_consumers(open_broker: OpenBroker) -> None:
    hub, broker = await open_hub(open_broker)
    first, second = await attach(hub, "c"), await attach(hub, "c")
    assert hub.topics == 1
    assert first.sub is not None
    assert second.sub is not None
    hub.unsubscribe(first.sub)
    assert hub.topics == 1
    hub.unsubscribe(second.sub)
    assert hub.topics == 0
    again = await attach(hub, "c")  # following again after letting go works
    await broker.publish([PublishRequest("c", ["5"])])
    assert payloads(await again.take(1)) == [5]


async def test_a_channel_that_cannot_be_followed_refuses_instead_of_hanging(open_broker: OpenBroker) -> None:
    hub, broker = await open_hub(open_broker)
    await raw(broker).set(f"{broker.keys.prefix}:{{taken}}", "a string, not a stream")
    with pytest.raises(BrokerError):
        await asyncio.wait_for(attach(hub, "taken"), timeout(5))
    assert hub.topics == 0
