"""Logging set-up shared by every entry point."""

from __future__ import annotations

import copy
import logging
from typing import Any

from uvicorn.config import LOGGING_CONFIG

_DENIAL_NOISE = "ASGI callable returned without completing handshake."


class _DenialNoise(logging.Filter):
    """uvicorn's websockets-sansio logs this ERROR after every WebSocket denial response (an HTTP
    answer instead of an upgrade), though the client got the response as sent; upstream fix:
    https://github.com/Kludex/uvicorn/pull/3138. The relay always accepts or denies, so the line
    carries no information here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _DENIAL_NOISE


def install() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DenialNoise) for f in logger.filters):
        logger.addFilter(_DenialNoise())


def uvicorn_config(level: str) -> dict[str, Any]:
    """uvicorn's logging config, with the relay's own loggers printed the same way."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["relay"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def configure_process(level: str) -> None:
    """Logging for the worker processes (the instances log through uvicorn's set-up)."""
    logging.basicConfig(
        level="DEBUG" if level == "trace" else level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
