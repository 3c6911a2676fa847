"""What the client raises.

::

    ClientError          the relay refused what the client asked, for good
     ├── NotStored       the relay stayed unavailable: the message is not known to be stored
     ├── Unreachable     no connection for longer than the caller allows
     └── Refused         an ``error`` reply on ``/ws``: its ``code``, ``detail`` and ``channel``
"""

from __future__ import annotations

import json

import httpx2
from websockets.exceptions import InvalidStatus


class ClientError(Exception):
    """The relay refused what the client asked, for good (a bad channel, a policy close)."""


class NotStored(ClientError):
    """The relay stayed unavailable for every attempt: the message is not known to be stored."""


class Unreachable(ClientError):
    """No connection to the relay could be made for longer than the caller allows."""


class Refused(ClientError):
    """The relay answered a frame on ``/ws`` with an ``error``: ``code`` (an
    :class:`app.protocol.codes.ErrorCode` value), ``detail``, and the ``channel`` it names, if any."""

    def __init__(self, code: str, detail: str, channel: str | None = None) -> None:
        super().__init__(
            f"{code}: {detail}" if channel is None else f"{code}: {detail} (channel {channel!r})"
        )
        self.code = code
        self.detail = detail
        self.channel = channel


def error_of(response: httpx2.Response) -> str:
    """An HTTP error answer, as the relay explained it."""
    try:
        body = response.json()
        return f"{response.status_code} {body.get('code')}: {body.get('detail')}"
    except ValueError:
        return f"{response.status_code}: {response.text[:200]}"


def refusal_of(exc: InvalidStatus) -> str:
    """A refused WebSocket handshake, as the relay explained it."""
    try:
        body = json.loads(exc.response.body or b"{}")
        return f"{exc.response.status_code} {body.get('code')}: {body.get('detail')}"
    except ValueError:
        return f"refused with {exc.response.status_code}"
