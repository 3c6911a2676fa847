"""Close codes and error codes: one table, used by the relay and by its clients.

Close codes (the code of the WebSocket close frame):

======  ===============  ===================================================================
code    name             meaning; what a client does
======  ===============  ===================================================================
1000    NORMAL           closed on purpose (an idle producer); connect again when needed
1001    GOING_AWAY       the instance stops: reconnect (elsewhere) and resume
1002    PROTOCOL_ERROR   the client broke RFC 6455 (a bad frame); fix the client
1006    ABNORMAL         never sent, only seen: the connection broke; reconnect and resume
1007    INVALID_DATA     a text frame that is not UTF-8; fix the client
1008    POLICY           refused: a bad channel, position or token, a flood; fix the client
1009    TOO_BIG          a frame over ``RELAY_MAX_MESSAGE_BYTES``; fix the client
1011    INTERNAL         the relay failed, or the keepalive timed out; reconnect and resume
1012    RESTART          the instance drains: reconnect (elsewhere) and resume with ``from``
1013    TRY_AGAIN        busy (balancers), or a /ws client too slow for its replies; retry later
4401    TOKEN_EXPIRED    the token's ``exp`` passed: reconnect with a new token and resume
======  ===============  ===================================================================

1000-2999 are RFC 6455's and the IANA registry's; 4000-4999 are the relay's own, where 4xxx
mirrors the HTTP status of the same refusal at the handshake (4401 for 401).

Error codes are the ``code`` of an ``error`` frame and of an HTTP error body (:class:`ErrorCode`).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Final


class Close(IntEnum):
    """WebSocket close codes (see the table above)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    RESTART = 1012
    TRY_AGAIN = 1013
    TOKEN_EXPIRED = 4401


class ErrorCode(StrEnum):
    """``code`` of an ``error`` frame (and of an HTTP error body)."""

    INVALID_JSON = "invalid_json"  # the frame is not one JSON value
    BINARY_FRAME = "binary_frame"  # the relay takes text frames
    TOO_LARGE = "too_large"  # HTTP body over RELAY_MAX_MESSAGE_BYTES
    INVALID_CHANNEL = "invalid_channel"
    INVALID_ID = "invalid_id"
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_CHANNEL = "unknown_channel"
    NOT_FOUND = "not_found"  # HTTP 404: no such file (the browser client, the console)
    UNEXPECTED_FRAME = "unexpected_frame"  # a fan-out consumer sent something
    UNAVAILABLE = "unavailable"  # Redis unreachable, or the instance is draining: not stored
    STORAGE_ERROR = "storage_error"  # Redis refused the write (e.g. the key is not a stream)
    RATE_LIMITED = "rate_limited"  # over RELAY_PUBLISH_RATE: not stored
    UNAUTHORIZED = "unauthorized"  # no valid token (HTTP 401)
    FORBIDDEN = "forbidden"  # the token does not cover the channel, or the origin is not allowed (403)
    UNKNOWN_ID = "unknown_id"  # a group member acked an id it does not hold
    URI_TOO_LONG = "uri_too_long"  # HTTP 414: the request target is over 8,192 bytes
    HEADERS_TOO_LARGE = "headers_too_large"  # HTTP 431: over RELAY_MAX_HEADER_BYTES or 256 fields
    REQUEST_TIMEOUT = "request_timeout"  # HTTP 408: no complete request head in RELAY_HANDSHAKE_TIMEOUT
    # on /ws (one connection, many channels): refusals of one frame; the connection stays open
    INVALID_FRAME = "invalid_frame"  # not JSON, not an object, an unknown type, a field missing or wrong
    INVALID_POSITION = "invalid_position"  # a subscribe's from is not $, 0 or an entry id
    ALREADY_SUBSCRIBED = "already_subscribed"
    NOT_SUBSCRIBED = "not_subscribed"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"  # over RELAY_MAX_SUBSCRIPTIONS on one connection
    INVALID_TOKEN = "invalid_token"  # a refresh whose token does not verify: the old one is kept


RETRY_CLOSES: Final = frozenset(
    {Close.GOING_AWAY, Close.ABNORMAL, Close.INTERNAL, Close.RESTART, Close.TRY_AGAIN}
)
"""Close codes after which a consumer reconnects and resumes; any other means: fix the client."""

RETRY_STATUSES: Final = frozenset({502, 503, 504})
"""HTTP answers worth trying again: the relay (503 ``unavailable``) or the balancer in front of it
(502, 504) is busy or changing."""

NOT_FATAL: Final = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.UNKNOWN_ID})
"""``error`` frames a consumer carries on after: an ack the relay could not record (the message
comes back later), or an ack of an id it did not hold."""
