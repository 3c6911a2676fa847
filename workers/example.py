"""An example handler for ``relay worker run``:

    RELAY_REDIS_URL=redis://127.0.0.1:6379/0 relay worker run workers.example:show --channel demo --group printers

A handler is any ``async def handler(message)``; returning acknowledges the message, raising
makes it come back later (``message.delivery`` counts the attempts).
"""

from __future__ import annotations

import logging

from workers.runner import Message

log = logging.getLogger("relay.example")


async def show(message: Message) -> None:
    """Log each message; refuse (and so retry) any message whose data is ``{"fail": true}``."""
    if isinstance(message.data, dict) and message.data.get("fail"):
        raise ValueError(f"asked to fail (delivery {message.delivery})")
    log.info("%s %s (delivery %d): %s", message.channel, message.id, message.delivery, message.data)
