"""``uvicorn app.main:app``: the relay built from the environment (``RELAY_`` variables, ``.env``).

``app`` is made on first access, so that importing this module reads no settings. ``relay serve``
(:mod:`app.server.serve`) is the same app plus the graceful drain on SIGTERM.
"""

from __future__ import annotations

from fastapi import FastAPI

from app.server.app import create_app
from app.server.serve import freeze_startup_objects


def __getattr__(name: str) -> FastAPI:
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    built = create_app()
    globals()["app"] = built
    freeze_startup_objects()
    return built
