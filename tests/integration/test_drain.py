"""SIGTERM: /readyz turns 503, consumers are told to go (1012), the process exits promptly."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import httpx2 as httpx
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.settings import Settings
from tests.conftest import RelayFactory
from tests.support import close_code, consumer, eventually, publish_all, recv_json, stream_ids, timeout

pytestmark = [pytest.mark.redis, pytest.mark.processes]


async def test_sigterm_drains_consumers_and_exits_within_five_seconds(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay(drain_grace="1").start()
    async with (
        consumer(f"{a.ws}/ws/consumer/idle-1") as c1,
        consumer(f"{a.ws}/ws/consumer/idle-2") as c2,
        consumer(f"{a.ws}/ws/consumer/idle-2?from=0") as c3,
        connect(f"{a.ws}/ws/producer/idle-2") as producer,
    ):
        acked = await publish_all(f"{a.ws}/ws/producer/idle-2", list(range(10)))
        for n in range(5):
            await producer.send(json.dumps({"late": n}))
        async with httpx.AsyncClient(base_url=a.http, timeout=timeout(2)) as http:
            assert (await http.get("/readyz")).status_code == 200
            started = time.monotonic()
            a.signal(signal.SIGTERM)

            # during the grace period: not ready, new connections refused, old ones still served
            async def not_ready() -> bool:
                return (await http.get("/readyz")).status_code == 503

            await eventually(not_ready, 1, "/readyz to turn 503")
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"{a.ws}/ws/consumer/idle-1", open_timeout=timeout(2)):
                    pass
            assert refused.value.response.status_code == 503

        late_replies = [await recv_json(producer) for _ in range(5)]
        codes = await asyncio.gather(close_code(c1), close_code(c2), close_code(c3), close_code(producer))
        assert codes == [1012, 1012, 1012, 1012]
        assert await asyncio.to_thread(a.wait_exit, 5 - (time.monotonic() - started)) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 5
    # every frame got its reply before the close; nothing acknowledged is lost
    assert [r["type"] for r in late_replies] == ["ack"] * 5
    stored = stream_ids(redis_client, f"{prefix}:{{idle-2}}")
    assert set(acked + [r["id"] for r in late_replies]) <= set(stored)


async def test_default_settings_exit_within_five_seconds_with_idle_consumers(relay: RelayFactory) -> None:
    fields = Settings.model_fields  # the defaults themselves (the test fixture sets a grace of 0)
    a = relay(
        drain_grace=str(fields["drain_grace"].default), drain_timeout=str(fields["drain_timeout"].default)
    )
    a.start()
    async with consumer(f"{a.ws}/ws/consumer/x") as ws, consumer(f"{a.ws}/ws/consumer/y?from=0"):
        started = time.monotonic()
        a.signal(signal.SIGTERM)
        assert await close_code(ws) == 1012
        await asyncio.to_thread(a.wait_exit, 5)
    assert time.monotonic() - started < 5


async def test_plain_uvicorn_also_stops_promptly_with_idle_consumers(relay: RelayFactory) -> None:
    """``uvicorn app.main:app`` (no ``relay serve``): uvicorn itself sends 1012 and the app exits."""
    a = relay()
    a.command = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(a.port)]
    a.start()
    async with consumer(f"{a.ws}/ws/consumer/plain") as ws:
        started = time.monotonic()
        a.signal(signal.SIGTERM)
        assert await close_code(ws) == 1012
        await asyncio.to_thread(a.wait_exit, 5)
    assert time.monotonic() - started < 5
