"""The relay's address as the caller gives it (``http://host:port``, or ``ws://``), either way."""

from __future__ import annotations


def websocket_url(base: str) -> str:
    """``http://host:port`` (or ws://) → ``ws://host:port``."""
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :]
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :]
    return base


def http_url(base: str) -> str:
    if base.startswith("wss://"):
        return "https://" + base[len("wss://") :]
    if base.startswith("ws://"):
        return "http://" + base[len("ws://") :]
    return base
