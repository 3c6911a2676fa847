"""The browser client (app/server/static/relay.js): its own tests on Node's test runner
(tests/js), and what the relay serves it as."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from app import __version__
from tests.support import ROOT, timeout


def test_the_client_passes_its_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (scripts/test installs nodejs)")
    done = subprocess.run(
        [node, "--test", "tests/js/"], cwd=ROOT, capture_output=True, text=True, timeout=timeout(120)
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert re.search(r"^# fail 0$", done.stdout, re.M), done.stdout[-2000:]


def test_the_client_and_its_declarations_name_the_relays_version() -> None:
    static = ROOT / "app" / "server" / "static"
    assert f'export const VERSION = "{__version__}";' in (static / "relay.js").read_text()
    declarations = (static / "relay.d.ts").read_text()
    for name in ("class Relay", "class RelayError", "class Subscription", "VERSION"):
        assert name in declarations, name
