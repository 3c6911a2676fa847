"""A real browser's handshake: headless Chromium (Debian's ``chromium`` and ``chromium-driver``)
carrying the cookie jar of a real site connects; one carrying far more gets an error at once;
directly and through the project's HAProxy config.

The page comes from a server of the test's own on another port of 127.0.0.1: another origin, but
the same host, so the cookies it sets go with the WebSocket handshake to the relay.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RelayFactory
from tests.integration.browsers import chromium
from tests.integration.test_balancer import balanced
from tests.support import free_port, timeout

pytestmark = [pytest.mark.redis, pytest.mark.processes, pytest.mark.browser]

PAGE = b"<!doctype html><title>relay handshake</title><p>this page sets cookies"
MAX_COOKIES = 16

OPEN = """
const [url, done] = arguments;
const started = performance.now();
const socket = new WebSocket(url);
let errored = false;
socket.onerror = () => { errored = true; };
socket.onmessage = (event) => {
  done({outcome: "message", frame: JSON.parse(event.data), ms: performance.now() - started,
        cookieBytes: document.cookie.length});
  socket.close();
};
socket.onclose = (event) => {
  done({outcome: errored ? "error" : "closed", code: event.code, ms: performance.now() - started,
        cookieBytes: document.cookie.length});
};
"""


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    """A page on 127.0.0.1, on a port of its own."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            """``/?cookies=N`` sets N cookies of 3,000 bytes (and drops the others): in the
            response's headers, so that they are in the browser's store before the page runs."""
            self.send_response(200)
            if self.path.startswith("/?cookies="):  # not /favicon.ico
                count = int(self.path.partition("=")[2])
                for i in range(MAX_COOKIES):
                    value = f"{'v' * 3000}; Path=/" if i < count else "; Path=/; Max-Age=0"
                    self.send_header("Set-Cookie", f"jar{i}={value}")
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as chrome:
        yield chrome


def open_socket(browser: Any, page_url: str, url: str, cookies: int) -> dict[str, Any]:
    browser.get(f"{page_url}?cookies={cookies}")
    result: dict[str, Any] = browser.execute_async_script(OPEN, url)
    return result


@pytest.mark.parametrize("through", ["direct", "balancer"])
def test_chromium_with_a_big_cookie_jar_connects_and_with_a_huge_one_fails_at_once(
    relay: RelayFactory, browser: Any, page_url: str, tmp_path: Path, through: str
) -> None:
    with contextlib.ExitStack() as stack:
        if through == "direct":
            base = relay().start().ws
        else:  # the project's HAProxy config in front of three instances
            _, lb = stack.enter_context(balanced(relay, tmp_path, drain_grace="0"))
            base = lb.url.replace("http://", "ws://")
        check_cookie_jars(browser, page_url, f"{base}/ws/consumer/browser")


def check_cookie_jars(browser: Any, page_url: str, url: str) -> None:
    for _ in range(2):  # and back again: the refusal leaves nothing behind
        nine_kb = open_socket(browser, page_url, url, cookies=3)
        assert 9_000 < nine_kb["cookieBytes"] < 9_500
        assert nine_kb["outcome"] == "message", nine_kb
        assert nine_kb["frame"]["type"] == "subscribed"

        forty_kb = open_socket(browser, page_url, url, cookies=14)
        assert forty_kb["cookieBytes"] > 40 * 1024
        assert forty_kb["outcome"] == "error", forty_kb
        assert forty_kb["ms"] < timeout(1) * 1000
