"""What an operator reads: one line per connection, JSON lines on request, no secrets."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import RelayFactory
from tests.support import close_code, consumer, publish_all, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.processes]


async def test_json_lines_with_one_line_per_connection_event(relay: RelayFactory) -> None:
    a = relay(log_format="json").start()
    async with consumer(f"{a.ws}/ws/consumer/logged") as ws:
        await ws.send("not for consumers")
        await ws.recv()  # the error frame
    wait_until(lambda: '"event":"close"' in a.log(), 5, "the close line")
    with pytest.raises(InvalidStatus):
        await publish_all(f"{a.ws}/ws/producer/bad%20name", [1])
    lines = [json.loads(line) for line in a.log().splitlines() if line.strip()]  # every line is JSON
    events = [(line.get("event"), line.get("role"), line.get("code")) for line in lines if line.get("event")]
    assert ("open", "consumer", None) in events
    assert ("error", "consumer", "unexpected_frame") in events
    closed = next(line for line in lines if line.get("event") == "close")
    assert (closed["by"], closed["code"], closed["errors"]) == ("client", 1000, 1)
    refused = next(line for line in lines if line.get("event") == "refused")
    assert (refused["status"], refused["code"]) == (400, "invalid_channel")
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)


async def test_a_drain_is_logged_with_what_it_closed(relay: RelayFactory) -> None:
    import signal

    a = relay(drain_grace="0").start()
    async with consumer(f"{a.ws}/ws/consumer/drained") as ws:
        a.signal(signal.SIGTERM)
        assert await close_code(ws) == 1012
    a.wait_exit(10)
    log = a.log()
    assert "draining: /readyz is 503; closing 1 connection(s)" in log
    assert "closed by relay, code 1012" in log
