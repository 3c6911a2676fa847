"""``relay serve``: uvicorn with the relay's drain on SIGTERM/SIGINT."""

from __future__ import annotations

import copy
import gc
import logging
import socket
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from app.server.app import create_app
from app.server.http import HttpProtocol, lift_websocket_limits
from app.server.lifecycle import Relay
from app.server.websocket import WebSocketProtocol
from app.server.wire import WireProtocol
from app.settings import Settings

log = logging.getLogger("relay")

WS_PROTOCOLS: dict[str, Any] = {"wire": WireProtocol, "websockets-sansio": WebSocketProtocol}
"""``RELAY_WS`` values served by the relay's own protocol classes; others are uvicorn's names."""


class RelayServer(uvicorn.Server):
    """Drains the relay (:meth:`app.server.lifecycle.Relay.drain`) before uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def _relay(self) -> Relay | None:
        return getattr(self._app.state, "relay", None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        relay = self._relay()
        if relay is not None:
            relay.begin_drain()  # /readyz answers 503 from this instant
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        relay = self._relay()
        if relay is not None and not self.force_exit:
            await relay.drain()
        await super().shutdown(sockets)


def serve(settings: Settings) -> None:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(
            "debug" if settings.log_level == "trace" else settings.log_level, settings.log_format
        ),
        http=HttpProtocol.configured(settings),
        ws=WS_PROTOCOLS.get(settings.ws, settings.ws),
        loop=settings.loop,
        ws_max_size=max(4 * settings.max_message_bytes, 1024 * 1024),
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        timeout_graceful_shutdown=max(1, round(settings.drain_timeout)),
        access_log=False,
        lifespan="on",
    )
    config.load()  # imports the WebSocket library that RELAY_WS names, whose limits follow the relay's
    lift_websocket_limits(settings)
    freeze_startup_objects()
    RelayServer(config, app).run()


def freeze_startup_objects() -> None:
    """Take what exists once the app is built out of the garbage collector's sight: the modules,
    classes and functions loaded (about 80,000 objects), which live as long as the process. A full
    collection walks every object it tracks, and with thousands of connections open it held the
    event loop for 70-190 ms, every delivery waiting meanwhile; without these, 20-85 ms
    (``docs/performance.md``, "Many channels"). Garbage is collected first, so none is kept."""
    gc.collect()
    gc.freeze()


def uvicorn_log_config(level: str, fmt: str = "text") -> dict[str, Any]:
    """uvicorn's logging config, with the relay's own loggers printed the same way."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["relay"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    if fmt == "json":
        for name in ("default", "access"):
            config["formatters"][name] = {"()": "app.logs.JsonFormatter"}
    return config
