"""A group member on this process (a WebSocket, or a worker's handler pool) and the reader's record
of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from app.broker.interface import Delivery
from app.errors import BrokerError

if TYPE_CHECKING:
    from app.groups.reader import GroupReader


class Member(Protocol):
    """What a member offers the reader that serves it."""

    @property
    def prefetch(self) -> int:
        """How many entries it may hold unacknowledged now (0: send it nothing)."""
        ...

    def deliver(self, deliveries: list[Delivery]) -> None:
        """Take these entries (now held by this member); must not block."""

    def ack_failed(self, ids: list[str], error: BrokerError) -> None:
        """Redis did not record these acks: the entries will be delivered again."""


class Membership:
    """The reader's record of one member: what it holds, by entry id (delivery count as value).

    The member acknowledges (or gives up) entries through its reader: ``membership.reader.ack``.
    """

    __slots__ = ("held", "member", "reader")

    def __init__(self, reader: GroupReader, member: Member) -> None:
        self.reader = reader
        self.member = member
        self.held: dict[str, int] = {}

    @property
    def room(self) -> int:
        return max(0, self.member.prefetch - len(self.held))
