"""Every group reader of this process, and its heartbeat (how the janitor tells that it lives)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from app import metrics
from app.broker.interface import GroupStore
from app.errors import BrokerError
from app.groups.member import Member, Membership
from app.groups.reader import GroupReader, NewEntries
from app.protocol.names import Position
from app.settings import Settings

HEARTBEAT_EVERY: Final = 5.0  # seconds; the heartbeat lives three times as long


class GroupManager:
    def __init__(self, broker: GroupStore, entries: NewEntries, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self.consumer = settings.instance_name
        self._entries = entries
        self._readers: dict[tuple[str, str], GroupReader] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._heartbeat = asyncio.create_task(self._beat(), name="relay-heartbeat")
        metrics.GROUP_HELD.set_function(self.held)

    def held(self) -> int:
        """Messages the members on this process hold unacknowledged (walks every reader)."""
        return sum(reader.held for reader in self._readers.values())

    async def join(self, channel: str, group: str, member: Member, position: Position) -> Membership:
        """Add a member; a group that does not exist is created where ``position`` says
        (``$``: new messages only, ``0``: everything retained). Raises BrokerError."""
        key = (channel, group)
        reader = self._readers.get(key)
        if reader is None:
            reader = self._readers[key] = GroupReader(
                self.broker,
                self._entries,
                self.settings,
                consumer=self.consumer,
                channel=channel,
                group=group,
                start=None if position.latest else position.after,
            )
        membership = reader.add(member)
        try:
            await asyncio.shield(reader.ready)
        except BaseException:
            self.leave(membership)
            raise
        return membership

    async def flush(self, membership: Membership) -> None:
        """Send the acks waiting in the member's reader now (a worker about to exit)."""
        with contextlib.suppress(BrokerError):
            await membership.reader.send_acks()

    def leave(self, membership: Membership) -> None:
        reader = membership.reader
        reader.remove(membership)
        key = (reader.channel, reader.group)
        if reader.empty and self._readers.get(key) is reader:
            del self._readers[key]
            task = asyncio.get_running_loop().create_task(reader.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        readers, self._readers = list(self._readers.values()), {}
        await asyncio.gather(*(reader.close() for reader in readers), *self._closing, return_exceptions=True)

    async def _beat(self) -> None:
        while True:
            with contextlib.suppress(BrokerError):
                await self.broker.heartbeat(self.consumer, int(HEARTBEAT_EVERY * 3000))
            await asyncio.sleep(HEARTBEAT_EVERY)
