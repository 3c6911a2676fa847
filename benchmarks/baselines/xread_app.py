"""Baseline: the per-consumer design. ``XADD`` per message; one Redis connection and one
``XREAD BLOCK`` loop per consumer connection, from the stream's last entry when it connected.

Keys: ``<BENCH_KEY_PREFIX>:<channel>`` (default prefix ``bench-xread``), never the relay's.

    BENCH_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn benchmarks.baselines.xread_app:app --port 8001
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as redis
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_KEY_PREFIX", "bench-xread")
MAXLEN = 100_000  # approximate trimming, as any real deployment would do
BLOCK_MS = 5_000
COUNT = 500


def stream_key(channel: str) -> str:
    return f"{PREFIX}:{channel}"


def connect_redis(**options: Any) -> redis.Redis:
    """Replies are RESP2 lists of strings (hence the ``Any`` annotations below)."""
    return redis.Redis.from_url(REDIS_URL, decode_responses=True, **options)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.redis = connect_redis()  # producers share one pool
    yield
    await app.state.redis.aclose()


app = FastAPI(lifespan=lifespan)


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    await app.state.redis.ping()
    return {"status": "ready"}


@app.websocket("/ws/producer/{channel}")
async def producer(ws: WebSocket, channel: str) -> None:
    await ws.accept()
    client: redis.Redis = ws.app.state.redis
    key = stream_key(channel)
    try:
        while True:
            text = await ws.receive_text()
            entry_id = await client.xadd(key, {"data": text}, maxlen=MAXLEN, approximate=True)
            await ws.send_text(str(entry_id))
    except WebSocketDisconnect:
        pass


@app.websocket("/ws/consumer/{channel}")
async def consumer(ws: WebSocket, channel: str) -> None:
    key = stream_key(channel)
    async with connect_redis(single_connection_client=True) as client:
        # the position is taken before the handshake completes: a connected client misses nothing
        newest: Any = await client.xrevrange(key, count=1)
        last: str = newest[0][0] if newest else "0-0"
        await ws.accept()
        follow = asyncio.create_task(_follow(ws, client, key, last))
        try:
            while (await ws.receive())["type"] != "websocket.disconnect":
                pass
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, OSError, redis.RedisError):
                await follow


async def _follow(ws: WebSocket, client: redis.Redis, key: str, last: str) -> None:
    while True:
        reply: Any = await client.xread({key: last}, count=COUNT, block=BLOCK_MS) or []
        for _, entries in reply:
            for entry_id, fields in entries:
                await ws.send_text(fields["data"])
                last = entry_id
