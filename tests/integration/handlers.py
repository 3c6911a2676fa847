"""Handlers the worker tests run in ``relay worker run`` processes. They record what they did in
Redis, under the test's key prefix (RELAY_REDIS_URL and RELAY_KEY_PREFIX come from the runner's
environment)."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import redis.asyncio as redis

from workers.runner import Message

_client = redis.Redis.from_url(os.environ["RELAY_REDIS_URL"], decode_responses=True)
_prefix = os.environ["RELAY_KEY_PREFIX"]


async def flaky(message: Message) -> None:
    """Fails the first attempt at every message whose data asks for it."""
    attempts = await _client.hincrby(f"{_prefix}:attempts", message.id, 1)
    if message.data.get("fail_first") and attempts == 1:
        raise RuntimeError("failing the first attempt, on purpose")
    await _client.sadd(f"{_prefix}:done", message.id)


async def slow(message: Message) -> None:
    """Takes a while, so that a runner killed mid-batch holds messages."""
    await _client.sadd(f"{_prefix}:started", message.id)
    await asyncio.sleep(float(message.data.get("seconds", 0.02)))
    await _client.sadd(f"{_prefix}:done", message.id)


async def loaded_modules(message: Message) -> None:
    """Records the names of every module the runner's process has loaded."""
    await _client.set(f"{_prefix}:modules", json.dumps(sorted(sys.modules)))
