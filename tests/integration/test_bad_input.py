"""Every bad input gets the contract's answer from a real instance, and loses nothing."""

from __future__ import annotations

import asyncio
import json

import httpx2 as httpx
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.client import Consumer, Message
from app.protocol.frames import MAX_DEPTH
from tests.conftest import RelayFactory
from tests.support import (
    Instance,
    close_code,
    consumer,
    events_of,
    publish_all,
    recv_json,
    recv_messages,
    stream_ids,
    timeout,
)

pytestmark = [pytest.mark.redis, pytest.mark.processes]


@pytest.fixture
def instance(relay: RelayFactory) -> Instance:
    return relay(max_message_bytes="1024").start()


async def test_invalid_json_and_binary_frames_get_errors_and_the_connection_keeps_working(
    instance: Instance, redis_client: redis.Redis, prefix: str
) -> None:
    async with connect(f"{instance.ws}/ws/producer/bad") as ws:
        for frame in ["{not json", b"\x00\x01", '{"a":1} trailing', "", '{"ok":true}']:
            await ws.send(frame)
        replies = [await recv_json(ws) for _ in range(5)]
    assert [r.get("code", r["type"]) for r in replies] == [
        "invalid_json",
        "binary_frame",
        "invalid_json",
        "invalid_json",
        "ack",
    ]
    assert all(r["detail"] for r in replies[:4])
    assert stream_ids(redis_client, f"{prefix}:{{bad}}") == [replies[4]["id"]]


async def test_an_oversized_frame_closes_with_1009_after_answering_earlier_frames(
    instance: Instance, redis_client: redis.Redis, prefix: str
) -> None:
    async with connect(f"{instance.ws}/ws/producer/big") as ws:
        for n in range(3):
            await ws.send(json.dumps(n))
        await ws.send(json.dumps("x" * 2000))
        acks = [await recv_json(ws) for _ in range(3)]
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws)
    assert [a["type"] for a in acks] == ["ack"] * 3
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
    assert stream_ids(redis_client, f"{prefix}:{{big}}") == [a["id"] for a in acks]


async def test_multibyte_text_is_measured_in_bytes(instance: Instance) -> None:
    async with connect(f"{instance.ws}/ws/producer/bytes") as ws:
        await ws.send(json.dumps("é" * 400, ensure_ascii=False))  # 800 bytes: fits
        assert (await recv_json(ws))["type"] == "ack"
        await ws.send(json.dumps("é" * 600, ensure_ascii=False))  # 1202 bytes: too big
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/ws/producer/bad%20name", "invalid_channel"),
        ("/ws/producer/-leading-dash", "invalid_channel"),
        ("/ws/producer/" + "c" * 129, "invalid_channel"),
        ("/ws/consumer/sp%C3%A9cial", "invalid_channel"),
        ("/ws/consumer/ok?from=abc", "invalid_id"),
        ("/ws/consumer/ok?from=1-2-3", "invalid_id"),
        ("/ws/consumer/ok?from=-1", "invalid_id"),
        ("/ws/consumer/ok?from=99999999999999999999-0", "invalid_id"),
        ("/ws/consumer/ok?from=", "invalid_id"),
        ("/ws/consumer/ok?group=", "invalid_request"),
        ("/ws/consumer/ok?group=g&prefetch=", "invalid_request"),
        # uvicorn decodes the path: these name the channels 'a/b', '../', 'a/b/c', '..'
        ("/ws/consumer/a%2Fb", "invalid_channel"),
        ("/ws/producer/a%2Fb", "invalid_channel"),
        ("/ws/consumer/..%2F", "invalid_channel"),
        ("/ws/producer/..%2F", "invalid_channel"),
        ("/ws/consumer/a%2Fb/c", "invalid_channel"),
        ("/ws/producer/..%2F..%2Fx", "invalid_channel"),
        ("/ws/consumer/%2E%2E", "invalid_channel"),
        ("/ws/consumer/ok/", "invalid_channel"),
    ],
)
async def test_bad_channel_names_and_positions_are_refused_before_the_upgrade(
    instance: Instance, path: str, code: str
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{instance.ws}{path}", open_timeout=timeout(5)):
            pass
    response = refused.value.response
    assert response.status_code == 400
    body = json.loads(response.body)
    assert (body["type"], body["code"]) == ("error", code)
    assert body["detail"]


async def test_a_producer_flooding_bad_frames_is_closed_with_1008_after_every_earlier_reply(
    instance: Instance, redis_client: redis.Redis, prefix: str
) -> None:
    async with connect(f"{instance.ws}/ws/producer/flood") as ws:
        await ws.send("1")
        for n in range(32):
            await ws.send(b"\x00" if n % 2 else "{not json")
            if n == 15:
                await ws.send("2")
        await ws.send("nope")  # the 33rd within 10 s
        await ws.send("3")  # never read
        replies = [await recv_json(ws) for _ in range(34)]
        assert await close_code(ws) == 1008
    kinds = [r.get("code", r["type"]) for r in replies]
    bad = ["invalid_json", "binary_frame"] * 8
    assert kinds == ["ack", *bad, "ack", *bad]
    assert stream_ids(redis_client, f"{prefix}:{{flood}}") == [replies[0]["id"], replies[17]["id"]]


async def test_nesting_deeper_than_the_limit_is_refused_and_the_client_reads_the_deepest(
    instance: Instance,
) -> None:
    deepest = [[{"a": "x"}]]
    for _ in range(MAX_DEPTH - 3):
        deepest = [deepest]
    async with connect(f"{instance.ws}/ws/producer/deep") as ws:
        for value in ([deepest], deepest, "[" * 500 + "]" * 500):
            await ws.send(value if isinstance(value, str) else json.dumps(value))
        replies = [await recv_json(ws) for _ in range(3)]
    assert [r.get("code", r["type"]) for r in replies] == ["invalid_json", "ack", "invalid_json"]
    assert all(f"at most {MAX_DEPTH} deep" in r["detail"] for r in replies[::2])

    async def first() -> Message:
        async with events_of(Consumer(instance.http, "deep", from_="0", give_up_after=5)) as events:
            async for event in events:
                assert isinstance(event, Message)
                return event
        raise AssertionError("the consumer ended")

    message = await asyncio.wait_for(first(), timeout(10))  # app.client parses it
    assert (message.id, message.data) == (replies[1]["id"], deepest)


async def test_a_consumer_that_talks_gets_errors_and_still_receives(instance: Instance) -> None:
    async with consumer(f"{instance.ws}/ws/consumer/chatty") as ws:
        await ws.send("hello?")
        assert (await recv_json(ws))["code"] == "unexpected_frame"
        ids = await publish_all(f"{instance.ws}/ws/producer/chatty", ["still here"])
        assert [m["id"] for m in await recv_messages(ws, 1)] == ids


async def test_a_consumer_flooding_frames_is_closed_with_1008(instance: Instance) -> None:
    async with consumer(f"{instance.ws}/ws/consumer/flood") as ws:
        for _ in range(100):
            await ws.send("spam")
        assert await close_code(ws) == 1008


def test_http_publish_errors(instance: Instance, redis_client: redis.Redis, prefix: str) -> None:
    with httpx.Client(base_url=instance.http, timeout=timeout(5)) as http:
        cases = [
            (http.post("/channels/bad%20name/messages", content="1"), 400, "invalid_channel"),
            (http.post("/channels/c/messages", content="{oops"), 400, "invalid_json"),
            (http.post("/channels/c/messages", content=b"\xff\xfe"), 400, "invalid_json"),
            (http.post("/channels/c/messages", content=json.dumps("x" * 2000)), 413, "too_large"),
            (
                http.post("/channels/c/messages", content="1", headers={"Idempotency-Key": "a b"}),
                400,
                "invalid_request",
            ),
            (http.get("/channels/c/messages?from=nope"), 400, "invalid_id"),
            (http.get("/channels/c/messages?from="), 400, "invalid_id"),
            (http.get("/channels/c/messages?limit=0"), 400, "invalid_request"),
            (http.get("/channels/c/messages?limit="), 400, "invalid_request"),
            (http.post("/channels/a%2Fb/messages", content="1"), 400, "invalid_channel"),
            (http.get("/channels/..%2F/messages"), 400, "invalid_channel"),
            (http.post("/channels/c/messages", content="[" * 129 + "]" * 129), 400, "invalid_json"),
            (http.get("/channels/never-written/messages"), 404, "unknown_channel"),
        ]
        for response, status, code in cases:
            assert (response.status_code, response.json()["code"]) == (status, code), response.text
            assert response.json()["type"] == "error"
            assert response.json()["detail"]
    assert redis_client.exists(f"{prefix}:{{c}}") == 0  # nothing was stored
