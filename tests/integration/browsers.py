"""Headless Chromium for the browser tests, and pages served from an origin of their own.

Chromium and its driver are Debian's packages (``chromium``, ``chromium-driver``): nothing is
downloaded. Pages come from a small server of the test's own on another port of 127.0.0.1, so
that the relay is another origin to them, as it is to a real site's pages.
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from selenium import webdriver

from tests.support import free_port, timeout

BROWSER_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


@contextlib.contextmanager
def chromium(script_timeout: float = 20) -> Iterator[Any]:
    """A headless Chromium, quit at the end."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.fail("chromium and chromium-driver are not installed (scripts/test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in BROWSER_FLAGS:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console.log, for failures
    chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    chrome.set_script_timeout(timeout(script_timeout))
    try:
        yield chrome
    finally:
        chrome.quit()


Pages = Callable[[str, str], str]
"""Register a page: ``pages(path, html)`` returns its URL on the page server."""


@contextlib.contextmanager
def page_server() -> Iterator[tuple[str, Pages]]:
    """A server of static pages on 127.0.0.1 (its own port: another origin than any relay).

    Yields its base URL and a function that registers a page at a path and returns its URL."""
    pages: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path.partition("?")[0])
            self.send_response(200 if body is not None else 404)
            body = body if body is not None else b"not found"
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def register(path: str, html: str) -> str:
        pages[path] = html.encode()
        return f"{base}{path}"

    try:
        yield base, register
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout(5))


def console_log(browser: Any) -> str:
    """What the page wrote to its console (for an assertion's message)."""
    with contextlib.suppress(Exception):
        return "\n".join(entry["message"] for entry in browser.get_log("browser"))
    return ""
