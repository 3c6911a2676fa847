"""The /ws client (app.client.Relay) and ``relay tail A B`` / ``relay presence C`` against real
instances: many channels on one socket, resume after a restart, publishes stored once."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import pytest
import redis

from app.client import Join, Leave, Message, Relay, Subscription
from app.client.multiplex import Event
from tests.conftest import RelayFactory, base_env
from tests.support import eventually, free_port, publish_all, stream_ids, timeout

pytestmark = [pytest.mark.redis, pytest.mark.processes]

CHANNELS = ("m-one", "m-two", "m-three")


async def take(sub: Subscription, count: int, within: float = 10) -> list[Event]:
    """The next ``count`` events of ``sub``."""
    out: list[Event] = []
    async with asyncio.timeout(timeout(within)):
        while len(out) < count:
            out.append(await anext(sub))
    return out


async def take_each(subs: list[Subscription], count: int, within: float = 10) -> list[list[str]]:
    """The ids of the next ``count`` messages of every subscription, read side by side."""
    got = await asyncio.gather(*(take(sub, count, within) for sub in subs))
    return [[e.id for e in events if isinstance(e, Message)] for events in got]


async def listed(client: Relay, channel: str, expected: set[str | None]) -> bool:
    """Whether the presence of ``channel`` is ``expected`` (a join is written to Redis in the
    background: a ``subscribed`` reply does not mean the client is listed yet)."""
    return {entry["client"] for entry in await client.presence(channel)} == expected


def relay_command(*args: str, within: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=timeout(within),
        stdin=subprocess.DEVNULL,
    )


async def test_one_socket_follows_three_channels_published_on_another_instance(relay: RelayFactory) -> None:
    a, b = relay().start(), relay().start()
    async with Relay(a.http, max_backoff=0.3) as client, Relay(b.http, max_backoff=0.3) as other:
        subs = [await client.subscribe(channel, presence=True) for channel in CHANNELS]
        sent = [await publish_all(f"{b.ws}/ws/producer/{channel}", list(range(5))) for channel in CHANNELS]
        sent[0] += [await other.publish(CHANNELS[0], {"from": "b"})]  # over /ws on b
        sent[1] += [await client.publish(CHANNELS[1], {"from": "a"})]  # over the same socket
        got = await take_each(subs[:2], 6)
        got += await take_each(subs[2:], 5)
        assert got == sent
        await other.subscribe(CHANNELS[2])  # on b: present on every instance
        joined = await take(subs[2], 1)
        both = {client.client_id, other.client_id}
        await eventually(lambda: listed(client, CHANNELS[2], both), 5, "both clients in presence")
        other_id = other.client_id
    assert other_id is not None
    assert joined == [Join(CHANNELS[2], other_id)]
    assert client.reconnects == 0


async def test_a_leave_reaches_a_watcher_on_another_instance(relay: RelayFactory) -> None:
    a, b = relay().start(), relay().start()
    async with Relay(a.http, max_backoff=0.3) as watcher:
        room = await watcher.subscribe("room", presence=True)
        async with Relay(b.http, max_backoff=0.3) as visitor:
            await visitor.subscribe("room")
            visitor_id = visitor.client_id
            assert visitor_id is not None
            assert await take(room, 1) == [Join("room", visitor_id)]
        assert await take(room, 1, within=5) == [Leave("room", visitor_id)]
        assert [entry["client"] for entry in await watcher.presence("room")] == [watcher.client_id]


async def test_every_subscription_resumes_after_its_instance_restarts(relay: RelayFactory) -> None:
    a = relay(drain_grace="0").start()
    b = relay().start()  # publishes while a is down
    async with Relay(a.http, max_backoff=0.3) as client:
        subs = [await client.subscribe(channel) for channel in CHANNELS]
        first = [await publish_all(f"{b.ws}/ws/producer/{channel}", list(range(10))) for channel in CHANNELS]
        assert await take_each(subs, 10) == first
        a.signal(signal.SIGTERM)
        await asyncio.to_thread(a.wait_exit, 10)
        down = [
            await publish_all(f"{b.ws}/ws/producer/{channel}", list(range(10, 15))) for channel in CHANNELS
        ]
        waiting = asyncio.ensure_future(client.publish(CHANNELS[0], "sent while down"))
        await asyncio.to_thread(a.start)  # the same port: the client finds it again
        down[0].append(await asyncio.wait_for(waiting, timeout(20)))
        later = [
            await publish_all(f"{a.ws}/ws/producer/{channel}", list(range(15, 20))) for channel in CHANNELS
        ]
        expected = [before + after for before, after in zip(down, later, strict=True)]
        got = await asyncio.gather(*(take(sub, len(ids)) for sub, ids in zip(subs, expected, strict=True)))
        assert [[e.id for e in events if isinstance(e, Message)] for events in got] == expected
        assert client.reconnects >= 1


async def test_each_publish_is_stored_once_across_a_killed_instance(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay(drain_grace="0").start()
    async with Relay(a.http, max_backoff=0.2) as client:
        tasks = [asyncio.ensure_future(client.publish("once", {"n": n})) for n in range(200)]
        await asyncio.wait(tasks, timeout=timeout(10), return_when=asyncio.FIRST_COMPLETED)
        a.signal(signal.SIGKILL)  # acks lost mid-flight
        await asyncio.to_thread(a.wait_exit, 10)
        await asyncio.to_thread(a.start)
        ids = await asyncio.wait_for(asyncio.gather(*tasks), timeout(30))
        assert client.reconnects >= 1
    stored = stream_ids(redis_client, f"{prefix}:{{once}}")
    assert len(ids) == len(set(ids)) == 200
    assert sorted(stored) == sorted(ids)  # nothing stored twice by a resend


async def test_relay_tail_of_several_channels_over_one_socket(relay: RelayFactory) -> None:
    a = relay().start()
    sent = {
        channel: await publish_all(f"{a.ws}/ws/producer/{channel}", [1, 2, 3]) for channel in CHANNELS[:2]
    }
    tail = await asyncio.to_thread(
        relay_command, "tail", *CHANNELS[:2], "--from", "0", "--count", "6", "--url", a.http
    )
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    for channel, ids in sent.items():
        assert [(line["id"], line["data"]) for line in lines if line["channel"] == channel] == list(
            zip(ids, [1, 2, 3], strict=True)
        )
    refused = await asyncio.to_thread(relay_command, "tail", "good", "bad name", "--url", a.http)
    assert refused.returncode == 2
    assert "invalid_channel" in refused.stderr
    nowhere = f"http://127.0.0.1:{free_port()}"
    gone = await asyncio.to_thread(relay_command, "tail", "x", "y", "--give-up", "1", "--url", nowhere)
    assert gone.returncode == 3


async def test_relay_presence_lists_the_clients_of_every_instance(relay: RelayFactory) -> None:
    a, b = relay().start(), relay().start()
    async with Relay(a.http) as client:
        await client.subscribe("lobby")
        await eventually(lambda: listed(client, "lobby", {client.client_id}), 5, "the client in presence")
        shown = await asyncio.to_thread(relay_command, "presence", "lobby", "--url", b.http)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == {
            "channel": "lobby",
            "clients": [{"client": client.client_id, "user": None, "info": None}],
        }
    bad = await asyncio.to_thread(relay_command, "presence", "bad name", "--url", a.http)
    assert bad.returncode == 2
    assert "invalid_channel" in bad.stderr
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert (await asyncio.to_thread(relay_command, "presence", "lobby", "--url", nowhere)).returncode == 3
