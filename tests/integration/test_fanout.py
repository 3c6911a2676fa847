"""Two real instances on one Redis, real WebSocket clients: delivery, order, resume, gaps."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
from websockets.asyncio.client import connect

from tests.conftest import RelayFactory
from tests.support import consumer, publish_all, recv_json, recv_messages, stream_ids, timeout, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.processes]


@pytest.mark.parametrize("ws", ["wire", "websockets-sansio"])  # frames written by the relay / by ASGI
async def test_message_published_on_one_instance_reaches_consumers_on_both_in_order(
    relay: RelayFactory, ws: str
) -> None:
    a, b = relay(ws=ws).start(), relay(ws=ws).start()
    async with (
        consumer(f"{a.ws}/ws/consumer/orders") as on_a,
        consumer(f"{b.ws}/ws/consumer/orders") as on_b,
        consumer(f"{b.ws}/ws/consumer/other") as other,
    ):
        ids = await publish_all(f"{a.ws}/ws/producer/orders", [{"n": n} for n in range(200)])
        for ws in (on_a, on_b):
            got = await recv_messages(ws, 200)
            assert [m["id"] for m in got] == ids
            assert [m["data"] for m in got] == [{"n": n} for n in range(200)]
            assert all(m["channel"] == "orders" and set(m) == {"type", "id", "channel", "data"} for m in got)
        # channels are independent: the other channel's consumer got nothing
        other_ids = await publish_all(f"{b.ws}/ws/producer/other", ["x"])
        assert (await recv_messages(other, 1))[0]["id"] == other_ids[0]


async def test_subscribed_frame_names_the_position_delivery_continues_after(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay().start()
    async with consumer(f"{a.ws}/ws/consumer/fresh") as empty:
        assert empty.subscribed == {"type": "subscribed", "channel": "fresh", "id": "0-0"}
    ids = await publish_all(f"{a.ws}/ws/producer/fresh", [1, 2, 3])
    async with consumer(f"{a.ws}/ws/consumer/fresh") as latest:
        assert latest.subscribed["id"] == ids[-1]
    async with consumer(f"{a.ws}/ws/consumer/fresh?from={ids[0]}") as resumed:
        assert resumed.subscribed["id"] == ids[0]
        assert [m["data"] for m in await recv_messages(resumed, 2)] == [2, 3]
    assert stream_ids(redis_client, f"{prefix}:{{fresh}}") == ids


async def test_default_channel_routes_of_the_original_toy(relay: RelayFactory) -> None:
    a = relay().start()
    async with consumer(f"{a.ws}/ws/consumer") as ws:
        assert ws.subscribed["channel"] == "default"
        ids = await publish_all(f"{a.ws}/ws/producer", [{"hello": "world"}])
        assert (await recv_messages(ws, 1))[0] == {
            "type": "message",
            "id": ids[0],
            "channel": "default",
            "data": {"hello": "world"},
        }


async def test_pipelined_producer_gets_one_ack_per_frame_in_order(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay().start()
    payloads = [{"seq": n, "pad": "x" * (n % 50)} for n in range(500)]
    ids = await publish_all(f"{a.ws}/ws/producer/pipe", payloads)
    assert len(ids) == 500
    assert len(set(ids)) == 500
    entries = redis_client.xrange(f"{prefix}:{{pipe}}")
    assert [entry_id for entry_id, _ in entries] == ids  # acked ids are exactly what Redis holds, in order
    assert [json.loads(fields["data"]) for _, fields in entries] == payloads


async def test_resume_is_exact_while_messages_keep_arriving(relay: RelayFactory) -> None:
    """Consumers resume from old ids on the other instance while a producer keeps publishing:
    each must get exactly the messages after its id, across the catch-up/live seam."""
    a, b = relay().start(), relay().start()
    total = 3000
    acked: list[str] = []
    resume_points = {300: "", 1200: "", 2000: ""}
    results: dict[int, list[str]] = {}

    async def produce() -> None:
        async with connect(f"{a.ws}/ws/producer/seam") as ws:
            for start in range(0, total, 50):
                for n in range(start, start + 50):
                    await ws.send(json.dumps({"n": n}))
                for _ in range(50):
                    reply = await recv_json(ws)
                    assert reply["type"] == "ack", reply
                    acked.append(reply["id"])
                    if len(acked) in resume_points:
                        # resume from a point ~200 messages back: the catch-up overlaps live traffic
                        index = len(acked) - 200
                        tasks.append(asyncio.create_task(resume(index, acked[index])))

    async def resume(index: int, after: str) -> None:
        async with consumer(f"{b.ws}/ws/consumer/seam?from={after}") as ws:
            got = await recv_messages(ws, total - index - 1, within=30)
            results[index] = [m["id"] for m in got]

    tasks: list[asyncio.Task[None]] = []
    await asyncio.wait_for(produce(), timeout(60))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout(60))
    assert len(results) == 3
    for index, got in results.items():
        assert got == acked[index + 1 :], f"resume after message {index} was not exact"


async def test_from_zero_replays_what_is_retained_without_a_gap(relay: RelayFactory) -> None:
    a = relay().start()
    ids = await publish_all(f"{a.ws}/ws/producer/replay", list(range(20)))
    async with consumer(f"{a.ws}/ws/consumer/replay?from=0") as ws:
        assert ws.subscribed["id"] == "0-0"
        assert [m["id"] for m in await recv_messages(ws, 20)] == ids


async def test_resuming_before_retention_reports_the_gap_first(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay(stream_maxlen="100").start()
    ids = await publish_all(f"{a.ws}/ws/producer/short", list(range(600)))
    retained = stream_ids(redis_client, f"{prefix}:{{short}}")
    assert 100 <= len(retained) <= 110, len(retained)
    assert retained == ids[-len(retained) :]

    async with consumer(f"{a.ws}/ws/consumer/short?from={ids[0]}") as ws:
        gap = await recv_json(ws)
        assert gap == {"type": "gap", "channel": "short", "from": ids[0], "next": retained[0]}
        assert [m["id"] for m in await recv_messages(ws, len(retained))] == retained

    # the newest removed entry is the exact edge: resuming from it loses nothing
    edge = ids[-len(retained) - 1]
    async with consumer(f"{a.ws}/ws/consumer/short?from={edge}") as ws:
        assert [m["id"] for m in await recv_messages(ws, len(retained))] == retained

    async with consumer(f"{a.ws}/ws/consumer/short?from=0") as ws:
        assert [m["id"] for m in await recv_messages(ws, len(retained))] == retained


async def test_stream_max_age_removes_old_entries_and_resume_reports_it(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay(stream_max_age="1").start()
    old = await publish_all(f"{a.ws}/ws/producer/aging", ["old"])

    def aged() -> bool:
        return int(redis_client.time()[0]) * 1000 > int(old[0].split("-")[0]) + 1100

    wait_until(aged, 5, "the first entry to be older than the max age")
    new = await publish_all(f"{a.ws}/ws/producer/aging", ["new"])
    assert stream_ids(redis_client, f"{prefix}:{{aging}}") == new
    async with consumer(f"{a.ws}/ws/consumer/aging?from=0-0") as ws:
        assert await recv_json(ws) == {"type": "gap", "channel": "aging", "from": "0-0", "next": new[0]}
        assert [m["data"] for m in await recv_messages(ws, 1)] == ["new"]


async def test_slow_consumer_falls_back_to_redis_without_loss_or_delaying_others(relay: RelayFactory) -> None:
    a = relay(consumer_buffer="20").start()
    total, pad = 3000, "p" * 4000  # 12 MB: far more than the socket buffers of a stalled reader
    async with (
        consumer(f"{a.ws}/ws/consumer/slow", max_queue=4) as stalled,
        consumer(f"{a.ws}/ws/consumer/slow") as fast,
    ):
        ids = await publish_all(f"{a.ws}/ws/producer/slow", [{"n": n, "pad": pad} for n in range(total)], 60)
        # the fast consumer is not held back by the stalled one
        assert [m["id"] for m in await recv_messages(fast, total, within=30)] == ids
        # the instance holds at most the stalled consumer's buffer, not its 12 MB backlog
        assert a.metric("relay_consumer_buffered_messages") <= 20
        assert a.metric("relay_slow_consumer_events_total") >= 1
        # the stalled consumer, reading at last, gets everything in order
        assert [m["id"] for m in await recv_messages(stalled, total, within=60)] == ids


async def test_compressed_and_plain_consumers_get_the_same_messages(relay: RelayFactory) -> None:
    """With permessage-deflate on, consumers that negotiated it and consumers that did not both
    get every message in order (the prepared frames are only written where no extension is)."""
    a = relay(ws_per_message_deflate="true").start()
    async with (
        connect(f"{a.ws}/ws/consumer/zip", compression="deflate") as zipped,
        connect(f"{a.ws}/ws/consumer/zip", compression=None) as plain,
    ):
        assert zipped.protocol.extensions, "the server did not negotiate permessage-deflate"
        assert not plain.protocol.extensions
        for ws in (zipped, plain):
            assert json.loads(await ws.recv())["type"] == "subscribed"
        values = [{"n": n, "pad": "z" * 300} for n in range(50)]
        await publish_all(f"{a.ws}/ws/producer/zip", values)
        for ws in (zipped, plain):
            async with asyncio.timeout(timeout(10)):
                got = [json.loads(await ws.recv()) for _ in values]
            assert [m["data"] for m in got] == values
