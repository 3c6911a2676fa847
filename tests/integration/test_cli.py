"""The ``relay`` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.conftest import RelayFactory, base_env
from tests.support import Instance, consumer, free_port, publish_all, recv_messages, timeout, wait_until

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


def relay_command(
    *args: str, stdin: str | None = None, within: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=base_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout(within),
    )


@pytest.mark.redis
def test_publish_tail_and_channels_as_a_user_runs_them(relay: RelayFactory) -> None:
    a = relay().start()
    one = relay_command("publish", "orders", '{"order": 1}', "--url", a.http)
    assert one.returncode == 0, one.stderr
    first = json.loads(one.stdout)["id"]
    many = relay_command("publish", "orders", "--url", a.http, stdin='{"order": 2}\n\n[3]\n"four"\n')
    assert many.returncode == 0, many.stderr
    ids = [first] + [json.loads(line)["id"] for line in many.stdout.splitlines()]
    assert len(ids) == 4

    tail = relay_command("tail", "orders", "--from", "0", "--count", "4", "--url", a.http)
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [(line["id"], line["data"]) for line in lines] == list(
        zip(ids, [{"order": 1}, {"order": 2}, [3], "four"], strict=True)
    )

    listing = relay_command("channels", "--url", a.http)
    assert listing.returncode == 0
    assert listing.stdout.splitlines()[0].split() == ["NAME", "LENGTH", "FIRST", "ID", "LAST", "ID", "GROUPS"]
    assert ["orders", "4", ids[0], ids[-1], "0"] in [row.split() for row in listing.stdout.splitlines()]
    as_json = [
        json.loads(line) for line in relay_command("channels", "--json", "--url", a.http).stdout.splitlines()
    ]
    assert {"name": "orders", "length": 4, "first_id": ids[0], "last_id": ids[-1], "groups": 0} in as_json


@pytest.mark.redis
def test_tail_with_a_group_acknowledges_what_it_prints(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay().start()
    relay_command("publish", "jobs", "--url", a.http, stdin="1\n2\n3\n")
    tail = relay_command(
        "tail", "jobs", "--group", "printers", "--from", "0", "--count", "3", "--url", a.http
    )
    assert tail.returncode == 0, tail.stderr
    assert [json.loads(line)["delivery"] for line in tail.stdout.splitlines()] == [1, 1, 1]
    wait_until(lambda: redis_client.xpending(f"{prefix}:{{jobs}}", "printers")["pending"] == 0, 5, "the acks")


@pytest.mark.redis
def test_exit_statuses_scripts_can_rely_on(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay().start()
    bad_json = relay_command("publish", "c", "--url", a.http, stdin="1\n\n{nope\n2\n")
    assert bad_json.returncode == 2
    assert "line 3 is not JSON" in bad_json.stderr  # numbered as the user sees the input
    assert len(bad_json.stdout.splitlines()) == 1  # the line before it was stored, the one after not
    assert redis_client.xlen(f"{prefix}:{{c}}") == 1
    bad_channel = relay_command("publish", "bad name", "1", "--url", a.http)
    assert bad_channel.returncode == 2
    assert "invalid_channel" in bad_channel.stderr
    refused = relay_command("tail", "bad name", "--url", a.http)
    assert refused.returncode == 2
    assert "invalid_channel" in refused.stderr
    no_scheme = relay_command("channels", "--url", f"127.0.0.1:{a.port}")
    assert no_scheme.returncode == 2
    nowhere = f"http://127.0.0.1:{free_port()}"
    nobody = relay_command("publish", "c", "1", "--attempts", "2", "--url", nowhere)
    assert nobody.returncode == 3
    assert "not stored" in nobody.stderr
    assert relay_command("tail", "c", "--give-up", "1", "--url", nowhere).returncode == 3
    assert relay_command("channels", "--url", nowhere).returncode == 3
