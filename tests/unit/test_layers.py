"""The import contracts (pyproject.toml, checked by lint-imports in scripts/test) cover every module.

A contract that names modules one by one stops protecting anything the day a module is added and
not named; these tests fail that day instead.
"""

from __future__ import annotations

import pkgutil
import tomllib
from typing import Any

import app
from tests.support import ROOT


def contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["name"]: contract for contract in config["contracts"]}


def top_level_modules() -> set[str]:
    """``app``'s modules and subpackages, by name (``__main__`` runs the CLI: not a layer)."""
    return {info.name for info in pkgutil.iter_modules(app.__path__)} - {"__main__"}


def contract(prefix: str) -> dict[str, Any]:
    (found,) = [c for name, c in contracts().items() if name.startswith(prefix)]
    return found


def test_every_module_of_app_has_a_layer() -> None:
    layers = contract("Imports point down")["layers"]
    layered = {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}
    assert layered == top_level_modules()


def test_the_client_may_import_nothing_of_app_but_the_protocol_and_the_backoff() -> None:
    forbidden = {m for m in contract("The client speaks only")["forbidden_modules"] if m.startswith("app.")}
    assert forbidden == {f"app.{name}" for name in top_level_modules() - {"protocol", "backoff", "client"}}
