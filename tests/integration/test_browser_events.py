"""A real EventSource (headless Chromium) following a channel through the project's HAProxy config
in front of three instances, on a page of another origin: the instance serving it is SIGTERMed,
then the next one SIGKILLed, while messages flow; the browser reconnects by itself with
``Last-Event-ID`` and ends with every acknowledged message once, in order."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import RelayFactory
from tests.integration.browsers import chromium, console_log, page_server
from tests.integration.test_balancer import balanced
from tests.support import Instance, timeout, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.processes, pytest.mark.browser]

PAGE = """<!doctype html><title>events</title><script>
window.seen = []; window.opens = 0; window.errors = 0; window.gaps = [];
const source = new EventSource(new URLSearchParams(location.search).get("events"));
source.addEventListener("subscribed", () => { window.opens += 1; });
source.addEventListener("message", (event) => {
  window.seen.push([event.lastEventId, JSON.parse(event.data).n]);
});
source.addEventListener("gap", (event) => { window.gaps.push(event.data); });
source.onerror = () => { window.errors += 1; };
</script>"""


class Publisher:
    """Publishes 0, 1, 2, ... through the balancer until stopped; each with an Idempotency-Key,
    sent again (same key) until acked, so that every number is stored exactly once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acked: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Publisher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout(20))

    def _run(self) -> None:
        with httpx.Client(timeout=3) as client:
            for n in range(100_000):
                if self._stop.is_set():
                    return
                self.acked.append((self._send(client, n), n))
                self._stop.wait(0.01)  # a steady ~100 msg/s

    def _send(self, client: httpx.Client, n: int) -> str:
        key = uuid.uuid4().hex
        for _ in range(500):
            try:
                reply = client.post(self.url, json={"n": n}, headers={"Idempotency-Key": key})
                if reply.status_code == 201:
                    entry_id: str = reply.json()["id"]
                    return entry_id
            except httpx.HTTPError:
                pass
            self._stop.wait(0.05)
        raise AssertionError(f"message {n} was never acked")


def serving(instances: list[Instance]) -> Instance:
    """The instance the page's stream is on."""
    found: list[Instance] = []
    wait_until(
        lambda: bool(found.extend(i for i in instances if i.connections("events") >= 1) or found),
        10,
        "a stream",
    )
    return found[0]


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as chrome:
        yield chrome


def test_an_event_source_resumes_exactly_across_a_drain_and_a_kill(
    relay: RelayFactory, tmp_path: Path, browser: Any
) -> None:
    with (
        balanced(relay, tmp_path, drain_grace="0.2", drain_timeout="2") as (instances, lb),
        page_server() as (_, pages),
    ):
        page = pages("/events.html", PAGE)
        browser.get(f"{page}?events={lb.url}/channels/sse/events")
        state = lambda name: browser.execute_script(f"return window.{name}")  # noqa: E731
        wait_until(lambda: state("opens") == 1, 10, "the stream to open")
        with Publisher(f"{lb.url}/channels/sse/messages") as publisher:
            wait_until(lambda: len(state("seen")) >= 20, 10, "messages to arrive")
            for opens, sig in ((2, signal.SIGTERM), (3, signal.SIGKILL)):
                victim = serving(instances)
                victim.signal(sig)
                victim.wait_exit(10)
                wait_until(lambda opens=opens: state("opens") == opens, 15, f"reconnect after {sig.name}")
                victim.start()
                seen = len(state("seen"))
                wait_until(lambda seen=seen: len(state("seen")) >= seen + 20, 10, "messages after it")
        acked = publisher.acked
        wait_until(lambda: len(state("seen")) >= len(acked), 10, "every acked message")
        seen = [(entry_id, n) for entry_id, n in state("seen")]
        assert seen == acked, console_log(browser)
        assert state("gaps") == []
        assert len(acked) > 60
