"""relay: a Redis-backed, horizontally scaled WebSocket relay."""

__version__ = "0.1.0"
