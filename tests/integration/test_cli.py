"""The ``relay`` command as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import base_env
from tests.support import Instance, consumer, publish_all, recv_messages, timeout

pytestmark = [pytest.mark.processes]


def run_relay(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=base_env(**settings),
        capture_output=True,
        text=True,
        timeout=timeout(30),
        stdin=subprocess.DEVNULL,
    )


async def test_without_a_redis_address_it_runs_embedded_and_says_so(tmp_path: Path) -> None:
    instance = Instance(base_env(), tmp_path / "relay.log")
    try:
        instance.start()
        assert "EMBEDDED in-process Redis" in instance.log()
        async with consumer(f"{instance.ws}/ws/consumer/try") as ws:
            ids = await publish_all(f"{instance.ws}/ws/producer/try", [{"first": "try"}])
            assert [m["id"] for m in await recv_messages(ws, 1)] == ids
    finally:
        instance.stop()


def test_help_lists_the_commands_and_settings() -> None:
    top = run_relay("--help")
    assert top.returncode == 0
    assert "serve" in top.stdout
    serve = run_relay("serve", "--help")
    assert serve.returncode == 0
    assert "RELAY_REDIS_URL" in serve.stdout
    assert "--port" in serve.stdout


def test_invalid_settings_stop_start_up_with_a_clear_message() -> None:
    result = run_relay("serve", stream_maxlen="-1", key_prefix="has space")
    assert result.returncode == 2
    assert "stream_maxlen" in result.stderr
    assert "key_prefix" in result.stderr
