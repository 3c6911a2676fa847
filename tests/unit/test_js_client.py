"""The browser client (app/server/static/relay.js): its own tests on Node's test runner
(tests/js, a fake WebSocket, no npm packages), and its declarations."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from app import __version__
from tests.support import ROOT, timeout

STATIC = ROOT / "app" / "server" / "static"


def test_the_client_passes_its_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not on PATH: the browser client's tests need Node.js (scripts/test installs nodejs)"
        )
    done = subprocess.run(
        [node, "--test", "tests/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout(120),
        check=False,
    )
    output = f"node --test tests/js/ exited {done.returncode}\n{done.stdout[-8000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, output
    assert re.search(r"^# fail 0$", done.stdout, re.M), output


def test_the_client_and_its_declarations_name_the_relays_version() -> None:
    assert f'export const VERSION = "{__version__}";' in (STATIC / "relay.js").read_text()
    declarations = (STATIC / "relay.d.ts").read_text()
    for name in ("class Relay ", "class RelayError ", "class Subscription ", "const VERSION"):
        assert name in declarations, name
