"""Baseline: the well-known toy. One process, an in-process ``asyncio.Queue`` per channel.

Queue semantics: each message reaches ONE consumer of its channel (whichever waits longest), and
only consumers of this very process. A message taken by a consumer that has just gone away is lost.

    uvicorn benchmarks.baselines.queue_app:app --port 8001
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

ACK = '{"type":"ack"}'

app = FastAPI()
queues: defaultdict[str, asyncio.Queue[str]] = defaultdict(asyncio.Queue)


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


@app.websocket("/ws/producer/{channel}")
async def producer(ws: WebSocket, channel: str) -> None:
    await ws.accept()
    queue = queues[channel]
    try:
        while True:
            queue.put_nowait(await ws.receive_text())
            await ws.send_text(ACK)
    except WebSocketDisconnect:
        pass


@app.websocket("/ws/consumer/{channel}")
async def consumer(ws: WebSocket, channel: str) -> None:
    await ws.accept()
    queue = queues[channel]
    try:
        while True:
            await ws.send_text(await queue.get())
    except (WebSocketDisconnect, OSError):
        pass
