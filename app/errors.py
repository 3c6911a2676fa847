"""Exceptions raised by the relay.

::

    RelayError
     ├── ConfigError            settings that cannot work (raised at start-up)
     ├── BrokerError            Redis did not do what was asked
     │    ├── BrokerUnavailable  Redis unreachable, timed out, or the connection dropped
     │    └── StorageError       Redis answered with an error (a key of the wrong type, a script error)
     │         └── GroupMissing  the consumer group is gone (deleted, or Redis lost its data)
     ├── ProtocolError          a client sent something the contract refuses
     │    ├── InvalidChannel     a channel name outside ``^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$``
     │    ├── InvalidPosition    a ``from`` that is not ``$``, ``0`` or a stream entry id
     │    └── InvalidRequest     any other parameter out of bounds (a group name, a prefetch)
     └── AuthError              no valid token, or one that does not cover the request
                                (``app.server.auth``)

Every ``ProtocolError`` carries the :class:`~app.protocol.codes.ErrorCode` the client sees.
"""

from __future__ import annotations

from typing import ClassVar

from app.protocol.codes import ErrorCode


class RelayError(Exception):
    """Base of every exception the relay raises on purpose."""


class ConfigError(RelayError):
    """A setting, or a combination of settings, that cannot work."""


class BrokerError(RelayError):
    """Redis did not do what was asked; nothing is known to be stored."""


class BrokerUnavailable(BrokerError):
    """Redis could not be reached, timed out, or dropped the connection."""


class StorageError(BrokerError):
    """Redis answered with an error, e.g. the channel's key holds something other than a stream."""


class GroupMissing(StorageError):
    """The consumer group does not exist (any more): create it again."""


class ProtocolError(RelayError):
    """A client sent something the contract refuses."""

    code: ClassVar[ErrorCode] = ErrorCode.INVALID_REQUEST

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidChannel(ProtocolError):
    code = ErrorCode.INVALID_CHANNEL


class InvalidPosition(ProtocolError):
    code = ErrorCode.INVALID_ID


class InvalidRequest(ProtocolError):
    code = ErrorCode.INVALID_REQUEST
