"""Redis goes away and comes back: no false ack, no hang, no busy loop, consumers carry on.

Sockets stay open throughout, so nothing here blocks the event loop: processes are started,
stopped and polled in threads, HTTP goes through an async client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from typing import Final

import httpx2 as httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import RelayFactory
from tests.support import RedisServer, consumer, eventually, recv_json, recv_messages, timeout, wait_until

pytestmark = [pytest.mark.processes]


async def test_redis_restart_is_survived_without_reconnecting(
    relay: RelayFactory, redis_server: RedisServer
) -> None:
    redis_server.start()
    a = relay(redis_url=redis_server.url, redis_timeout="1").start()
    b = relay(redis_url=redis_server.url, redis_timeout="1").start()
    async with (
        consumer(f"{a.ws}/ws/consumer/o") as ws,
        connect(f"{a.ws}/ws/producer/o") as producer,
        httpx.AsyncClient(timeout=timeout(5)) as http,
    ):
        before = []
        for n in range(5):
            await producer.send(json.dumps({"before": n}))
            before.append((await recv_json(producer))["id"])
        assert [m["id"] for m in await recv_messages(ws, 5)] == before

        await asyncio.to_thread(redis_server.stop)
        await asyncio.to_thread(
            wait_until, lambda: a.readyz() == 503, 5, "/readyz to report Redis unavailable"
        )

        # a producer gets an error, not an ack and not a hang
        started = time.monotonic()
        await producer.send(json.dumps({"during": 1}))
        reply = await recv_json(producer, within=5)
        assert (reply["type"], reply["code"]) == ("error", "unavailable"), reply
        assert time.monotonic() - started < timeout(5)
        response = await http.post(f"{a.http}/channels/o/messages", content="1")
        assert (response.status_code, response.json()["code"]) == (503, "unavailable")

        # while Redis is down the instance backs off instead of spinning
        cpu = a.cpu_seconds()
        await asyncio.sleep(3)  # a window to measure CPU over, not a wait for an event
        assert a.cpu_seconds() - cpu < 0.5

        # Redis answers again (start() returns once it answers PING): both instances are ready
        # within a second, however long their Pub/Sub reconnect had been backing off
        await asyncio.to_thread(redis_server.start)
        answered = time.monotonic()

        async def both_ready() -> bool:
            codes = [(await http.get(f"{i.http}/readyz")).status_code for i in (a, b)]
            return codes == [200, 200]

        await eventually(both_ready, 1, "/readyz to be 200 on both instances")
        assert time.monotonic() - answered < timeout(1)
        # published through the other instance: the consumer on A, followed on since before the
        # outage, gets it
        async with connect(f"{b.ws}/ws/producer/o") as other:
            await other.send(json.dumps({"after": "b"}))
            from_b = await recv_json(other, within=10)
        assert from_b["type"] == "ack", from_b
        after = []
        for n in range(5):
            await producer.send(json.dumps({"after": n}))
            reply = await recv_json(producer)
            assert reply["type"] == "ack", reply
            after.append(reply["id"])

        got = await recv_messages(ws, 6, within=20)
        assert [m["id"] for m in got] == [from_b["id"], *after]
        assert [m["data"] for m in got] == [{"after": "b"}] + [{"after": n} for n in range(5)]


async def test_a_producer_that_leaves_while_redis_hangs_is_let_go_at_once(
    relay: RelayFactory, redis_server: RedisServer
) -> None:
    """Its publish is still waiting for Redis: the connection ends anyway, and stops counting
    against RELAY_MAX_CONNECTIONS (and the drain) long before Redis answers or times out."""
    redis_server.start()
    a = relay(redis_url=redis_server.url, redis_timeout="5").start()

    async def producers() -> float:
        async with httpx.AsyncClient(timeout=timeout(5)) as http:
            text = (await http.get(f"{a.http}/metrics")).text
        match = re.search(r'^relay_connections\{role="producer"\} (\S+)$', text, re.M)
        return float(match[1]) if match else 0.0

    async with connect(f"{a.ws}/ws/producer/hang") as producer:
        await producer.send(json.dumps({"before": 1}))
        assert (await recv_json(producer))["type"] == "ack"
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)  # Redis hangs: nothing is answered
        try:
            await producer.send(json.dumps({"while": "hung"}))
            await producer.close()  # gone before its reply
            started = time.monotonic()

            async def let_go() -> bool:
                return await producers() == 0

            await eventually(let_go, 2, "the producer's connection to end")
            assert time.monotonic() - started < timeout(2)  # not the 5 s Redis gets to answer
        finally:
            redis_server.process.send_signal(signal.SIGCONT)


_FRAMES: Final = [json.dumps({"n": n, "pad": "x" * 60_000}) for n in range(280)]  # 16.8 MB


async def _held_by_a_frozen_redis(
    producer: ClientConnection, redis_server: RedisServer
) -> asyncio.Task[None]:
    """Freeze Redis once the producer's line is connected, start sending ``_FRAMES``, and find
    the sender held (the relay read no further than its window): the sending task."""

    async def send_all() -> None:
        for frame in _FRAMES:
            await producer.send(frame)

    await producer.send(json.dumps({"first": True}))
    assert (await recv_json(producer))["type"] == "ack"  # the publisher's line is connected
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    sending = asyncio.create_task(send_all())
    done, _ = await asyncio.wait([sending], timeout=timeout(2))
    assert not done, "the relay read past its window while Redis did not answer"
    return sending


async def test_a_producer_that_outruns_redis_is_held_back_by_tcp_and_every_frame_is_acked_in_order(
    relay: RelayFactory, redis_server: RedisServer
) -> None:
    """Frames are taken as they arrive (no reader task on the wire), yet beyond the window the
    relay stops reading the socket: with Redis frozen, the client cannot send its 16 MB; once
    Redis answers, every frame gets its ack, in order, and is stored once."""
    redis_server.start()
    a = relay(redis_url=redis_server.url, redis_timeout="30", producer_window="4").start()
    async with connect(f"{a.ws}/ws/producer/held", max_size=None) as producer:
        try:
            sending = await _held_by_a_frozen_redis(producer, redis_server)
        finally:
            redis_server.resume()
        await asyncio.wait_for(sending, timeout(30))
        replies = [await recv_json(producer, within=30) for _ in _FRAMES]
    refused = [reply for reply in replies if reply["type"] != "ack"]
    assert not refused, refused[:1]
    stored = redis_server.client().xrange(f"{a.env['RELAY_KEY_PREFIX']}:{{held}}")
    assert [entry_id for entry_id, _ in stored[1:]] == [reply["id"] for reply in replies]
    assert [json.loads(fields["data"])["n"] for _, fields in stored[1:]] == list(range(len(_FRAMES)))


async def test_a_held_producer_that_is_told_to_close_reads_nothing_more(
    relay: RelayFactory, redis_server: RedisServer
) -> None:
    """A producer held at its window while its instance drains: the relay reads no more of its
    frames (each would be one more reply kept), and the sender stays held until the close."""
    redis_server.start()
    a = relay(redis_url=redis_server.url, redis_timeout="30", producer_window="4", drain_timeout="3").start()
    async with connect(f"{a.ws}/ws/producer/held", max_size=None) as producer:
        try:
            sending = await _held_by_a_frozen_redis(producer, redis_server)
            a.signal(signal.SIGTERM)  # drain: the producer is asked to close while held
            done, _ = await asyncio.wait([sending], timeout=timeout(2))
            assert not done or sending.exception() is not None, "a closing producer's frames were read"
        finally:
            redis_server.resume()
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(sending, timeout(30))
    assert await asyncio.to_thread(a.wait_exit, 30) in (0, -signal.SIGTERM)


async def test_a_socket_gone_while_its_subscribe_waits_for_redis_leaves_the_channel_unfollowed(
    relay: RelayFactory, redis_server: RedisServer
) -> None:
    """A ``/ws`` subscribe waits for its channel's position with a callback, not a task. When
    the socket has closed by the time Redis answers, the subscription leaves the hub there and
    then: the channel is not followed on for nobody."""
    redis_server.start()
    a = relay(redis_url=redis_server.url, redis_timeout="30").start()

    async def followed(count: int) -> bool:
        return await asyncio.to_thread(a.metric, "relay_channels_followed") == count

    async with connect(f"{a.ws}/ws") as ws:
        assert (await recv_json(ws))["type"] == "connected"
        await ws.send(json.dumps({"type": "subscribe", "channel": "first", "ref": 1}))
        assert (await recv_json(ws))["type"] == "subscribed"  # Redis answers: the relay is connected
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            await ws.send(json.dumps({"type": "subscribe", "channel": "late", "ref": 2}))
            await eventually(lambda: followed(2), 5, "the second channel to be asked for")
            await ws.close()
            await eventually(lambda: followed(1), 5, "the closed socket's followed channel to go")
        finally:
            redis_server.resume()
    # Redis answers the position of "late" now, to a subscription whose socket is gone
    await eventually(lambda: followed(0), 10, "the late channel to be let go once Redis answered")
