"""Logging set-up shared by every entry point: text or JSON lines (``RELAY_LOG_FORMAT``), tokens
redacted from everything uvicorn logs, one line per connection opened and closed.

Imports no server: the worker processes log through it too (``relay serve`` hands uvicorn its
config, :func:`app.server.serve.uvicorn_log_config`)."""

from __future__ import annotations

import logging
import re
import time
from typing import Any
from urllib.parse import unquote_plus

import orjson

_DENIAL_NOISE = "ASGI callable returned without completing handshake."
_QUERY_PARAM = re.compile(r"([?&])([^=&\s\"']*)=([^&\s\"']*)")
_AUTHORIZATION = re.compile(r"(authorization:\s*)[^\r\n]*", re.IGNORECASE)
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "color_message", "asctime"}

connections = logging.getLogger("relay.connections")


class _DenialNoise(logging.Filter):
    """uvicorn's websockets-sansio logs this ERROR after every WebSocket denial response (an HTTP
    answer instead of an upgrade), though the client got the response as sent; upstream fix:
    https://github.com/Kludex/uvicorn/pull/3138. The relay always accepts or denies, so the line
    carries no information here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _DENIAL_NOISE


def redact(text: str) -> str:
    """``?token=<jwt>`` (however its name is percent-encoded) becomes ``?token=***``; an
    ``Authorization:`` header line keeps its name only."""

    def param(match: re.Match[str]) -> str:
        if unquote_plus(match[2]).lower() == "token":
            return f"{match[1]}{match[2]}=***"
        return match[0]

    return _AUTHORIZATION.sub(r"\1***", _QUERY_PARAM.sub(param, text))


class RedactTokens(logging.Filter):
    """Tokens never reach the logs, whoever logs the request (uvicorn, websockets, the relay)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def install() -> None:
    for name in ("uvicorn.error", "uvicorn.access", "websockets", "websockets.server"):
        logger = logging.getLogger(name)
        for kind in (_DenialNoise, RedactTokens):
            if not any(isinstance(f, kind) for f in logger.filters):
                logger.addFilter(kind())


def configure_process(level: str, fmt: str = "text") -> None:
    """Logging for the worker processes (the instances log through uvicorn's set-up)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level="DEBUG" if level == "trace" else level.upper(), handlers=[handler])


class ConnectionLog:
    """The open and close lines of one connection, and its first few error replies.

    It keeps the peer's address as the scope has it and makes the lines' fields when it logs:
    a dict and a string less per connection for as long as it stays open."""

    __slots__ = ("_channel", "_errors", "_opened", "_peer", "_role")

    _ERRORS_LOGGED = 10

    def __init__(self, role: str, channel: str, peer: tuple[str, int] | str | None) -> None:
        self._role = role
        self._channel = channel
        self._peer = peer  # the scope's (host, port), or a text already made
        self._opened = time.monotonic()
        self._errors = 0
        fields = self._fields("open")
        connections.info("%s %s %s: open", fields["peer"], role, channel, extra=fields)

    def _fields(self, event: str) -> dict[str, Any]:
        peer = self._peer
        text = peer if isinstance(peer, str) else peer_of(peer)
        return {"event": event, "role": self._role, "channel": self._channel, "peer": text}

    def error(self, code: str, detail: str) -> None:
        self._errors += 1
        if self._errors <= self._ERRORS_LOGGED:
            fields = self._fields("error")
            fields["code"] = code
            connections.info(
                "%s %s %s: error %s: %s",
                fields["peer"],
                fields["role"],
                fields["channel"],
                code,
                detail,
                extra=fields,
            )

    def closed(self, code: int | None, reason: str, by: str) -> None:
        seconds = round(time.monotonic() - self._opened, 3)
        fields = self._fields("close")
        fields.update(code=code, reason=reason, by=by, seconds=seconds, errors=self._errors)
        connections.info(
            "%s %s %s: closed by %s, code %s%s, after %.1fs, %d error(s)",
            fields["peer"],
            fields["role"],
            fields["channel"],
            by,
            code,
            f" ({reason})" if reason else "",
            seconds,
            self._errors,
            extra=fields,
        )


def peer_of(scope_client: tuple[str, int] | None) -> str:
    return f"{scope_client[0]}:{scope_client[1]}" if scope_client else "-"
