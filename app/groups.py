"""Consumer groups (work queues): each message of a channel goes to one member of a group.

A process is one Redis consumer in every group it serves (named ``RELAY_INSTANCE_NAME``). For
each (channel, group) with local members, one :class:`GroupReader` reads for all of them and
hands each entry to a member with room (at most ``prefetch`` unacknowledged per member):

- reads never block: the channel's announcements (through the hub), a member's ack and a
  member joining say when to read, so Redis connections stay the broker's constant few; acks are
  sent in batches, one XACK per turn of the reader;
- what members hold stays claimed by this process: its idle time is reset every third of
  ``RELAY_GROUP_CLAIM_IDLE_MS``;
- what a member held when it went away is no longer touched, so after the idle time some reader,
  on any instance, claims it (a new delivery, counted) or, once delivered
  ``RELAY_GROUP_MAX_DELIVERIES`` times, moves it to ``relay:{C}:dead``.

The same machinery serves WebSocket members (``routes/consumer.py``) and the worker runner
(``workers/runner.py``), whose "member" is a pool of handler tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

from redis.backoff import ExponentialWithJitterBackoff

from app import metrics, streamid
from app.broker import Broker, Delivery
from app.errors import BrokerError, GroupMissing
from app.hub import Hub
from app.protocol import Position
from app.settings import Settings
from app.streamid import StreamId
from app.wakeup import Wakeup

log = logging.getLogger("relay.groups")

HEARTBEAT_EVERY: Final = 5.0  # seconds; the heartbeat lives three times as long


class Member(Protocol):
    """A group member on this process: a WebSocket, or a worker's handler pool."""

    @property
    def prefetch(self) -> int: ...

    def deliver(self, deliveries: list[Delivery]) -> None:
        """Take these entries (now held by this member); must not block."""

    def ack_failed(self, ids: list[str], error: BrokerError) -> None:
        """Redis did not record these acks: the entries will be delivered again."""


class Membership:
    """The reader's record of one member: what it holds, by entry id (delivery count as value)."""

    __slots__ = ("held", "member", "reader")

    def __init__(self, reader: GroupReader, member: Member) -> None:
        self.reader = reader
        self.member = member
        self.held: dict[str, int] = {}

    @property
    def room(self) -> int:
        return max(0, self.member.prefetch - len(self.held))


class GroupReader:
    """Reads one channel's group for the members on this process."""

    def __init__(self, manager: GroupManager, channel: str, group: str, start: StreamId | None) -> None:
        self._manager = manager
        self._broker = manager.broker
        self.channel = channel
        self.group = group
        self._start = start
        self._members: list[Membership] = []
        self._turn = 0  # round-robin start for fairness between members
        self._acks: list[tuple[Membership, str]] = []  # to send in the next XACK
        self._wake = Wakeup()
        self._closed = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        idle = manager.settings.group_claim_idle_ms / 1000
        self._touch_every = idle / 3
        self._claim_every = min(max(idle / 4, 0.05), 5.0)
        self._task = asyncio.create_task(self._run(), name=f"relay-group-{channel}-{group}")

    @property
    def empty(self) -> bool:
        return not self._members

    @property
    def held(self) -> int:
        return sum(len(m.held) for m in self._members)

    def add(self, member: Member) -> Membership:
        membership = Membership(self, member)
        self._members.append(membership)
        self._wake.set()
        return membership

    def remove(self, membership: Membership) -> None:
        """The member left: what it held is no longer kept, and will be claimed after the idle time."""
        if membership in self._members:
            self._members.remove(membership)
        membership.held.clear()

    def wake(self) -> None:
        self._wake.set()

    def ack(self, membership: Membership, ids: Sequence[str]) -> list[str]:
        """Acknowledge entries the member holds (sent to Redis with the reader's next batch of acks;
        a failure reaches ``Member.ack_failed``). Returns the ids it does not hold: nothing done."""
        unknown = []
        for entry_id in ids:
            if membership.held.pop(entry_id, None) is None:
                unknown.append(entry_id)
            else:
                self._acks.append((membership, entry_id))
        if len(unknown) < len(ids):
            self._wake.set()  # acks to send, room for more
        return unknown

    def release(self, membership: Membership, ids: Sequence[str]) -> None:
        """The member gives these up unprocessed: they will be delivered again after the idle time."""
        for entry_id in ids:
            membership.held.pop(entry_id, None)
        self._wake.set()

    async def close(self) -> None:
        """Stop the loop: at its next turn (woken now), or by cancellation, whichever comes first.
        Acks members sent before they left still go to Redis."""
        self._closed = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), 1.0)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(BrokerError, TimeoutError):
            await asyncio.wait_for(self.send_acks(), self._manager.settings.redis_timeout)

    # -- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._setup()
        except Exception:
            return  # join() raises it to the members, who leave
        try:
            await self._serve()
        finally:
            self._manager.hub.unwatch(self.channel, self.wake)

    async def _serve(self) -> None:
        """Until closed: send acks, keep what members hold, claim what was abandoned, read."""
        loop = asyncio.get_running_loop()
        timers = {"touch": 0.0, "claim": 0.0}
        backoff = ExponentialWithJitterBackoff(base=0.1, cap=5.0)
        failures = 0
        while not self._closed:
            try:
                await self._turn_once(loop, timers)
                failures = 0
            except GroupMissing:
                log.warning("group %r of channel %r vanished; creating it again", self.group, self.channel)
                self._start = streamid.ZERO  # what was published since must not be skipped
                failures += 1
                await self._retry(self._create, backoff.compute(failures))
                continue
            except Exception as exc:  # Redis away: back off, keep the members
                failures += 1
                log.warning("group %r of channel %r: %s; retrying", self.group, self.channel, exc)
                await asyncio.sleep(backoff.compute(failures))
                continue
            wait = max(0.0, min(timers.values()) - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _retry(self, step: Callable[[], Awaitable[None]], delay: float) -> None:
        try:
            await step()
        except Exception as exc:
            log.warning("group %r of channel %r: %s; retrying", self.group, self.channel, exc)
            await asyncio.sleep(delay)

    async def _turn_once(self, loop: asyncio.AbstractEventLoop, timers: dict[str, float]) -> None:
        await self.send_acks()
        now = loop.time()
        if now >= timers["touch"]:
            timers["touch"] = now + self._touch_every
            await self._touch()
        if now >= timers["claim"]:
            timers["claim"] = now + self._claim_every
            if self._room():  # nobody to give claimed entries to: leave them
                await self._claim()
        await self._read(until=min(timers.values()), loop=loop)

    async def _setup(self) -> None:
        try:
            await self._create()
            await self._manager.hub.watch(self.channel, self.wake)
        except BaseException as exc:
            error = exc if isinstance(exc, BrokerError) else BrokerError(f"cannot read the group: {exc!r}")
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: the members may have left already
            raise
        self.ready.set_result(None)

    async def _create(self) -> None:
        await self._broker.group_create(self.channel, self.group, self._start)

    def _room(self) -> int:
        return sum(m.room for m in self._members)

    async def send_acks(self) -> None:
        """One XACK for every ack members sent since the last one."""
        while self._acks:
            acks, self._acks = self._acks, []
            try:
                await self._broker.group_ack(self.channel, self.group, [entry_id for _, entry_id in acks])
                metrics.ACKED.inc(len(acks))
            except BrokerError as exc:
                failed: dict[int, tuple[Membership, list[str]]] = {}
                for membership, entry_id in acks:
                    failed.setdefault(id(membership), (membership, []))[1].append(entry_id)
                for membership, ids in failed.values():
                    membership.member.ack_failed(ids, exc)
                raise

    async def _touch(self) -> None:
        held = [entry_id for m in self._members for entry_id in m.held]
        if held:
            await self._broker.group_touch(self.channel, self.group, self._manager.consumer, held)

    async def _claim(self) -> None:
        settings = self._manager.settings
        claimed = await self._broker.group_claim(
            self.channel,
            self.group,
            self._manager.consumer,
            min_idle_ms=settings.group_claim_idle_ms,
            max_deliveries=settings.group_max_deliveries,
            count=self._room(),
        )
        if claimed.dead:
            metrics.DEAD_LETTERED.inc(len(claimed.dead))
            log.warning(
                "channel %r group %r: %d message(s) delivered %d times moved to the dead letters: %s",
                self.channel,
                self.group,
                len(claimed.dead),
                settings.group_max_deliveries,
                ", ".join(claimed.dead[:10]),
            )
        self._dispatch(claimed.deliveries)

    async def _read(self, *, until: float, loop: asyncio.AbstractEventLoop) -> None:
        """New entries while members have room and the stream has them, until a timer is due
        (a long backlog must not starve the touches that keep what members hold)."""
        while (room := self._room()) and loop.time() < until:
            await self.send_acks()
            got = await self._broker.group_read(self.channel, self.group, self._manager.consumer, room)
            self._dispatch(got)
            if len(got) < room:
                return

    def _dispatch(self, deliveries: list[Delivery]) -> None:
        """Round-robin over members with room. An entry nobody can take (a member left meanwhile)
        stays pending, untouched, and is claimed again after the idle time."""
        batches: dict[int, list[Delivery]] = {}
        members = self._members
        for delivery in deliveries:
            for step in range(len(members)):
                index = (self._turn + step) % len(members)
                if members[index].room > 0:
                    members[index].held[delivery.entry_id] = delivery.count
                    batches.setdefault(index, []).append(delivery)
                    self._turn = index + 1
                    break
        for index, batch in batches.items():
            members[index].member.deliver(batch)


class GroupManager:
    """Every group reader of this process, and its heartbeat (how the janitor tells it lives)."""

    def __init__(self, broker: Broker, hub: Hub, settings: Settings) -> None:
        self.broker = broker
        self.hub = hub
        self.settings = settings
        self.consumer = settings.instance_name
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
            start = None if position.latest else position.after
            reader = self._readers[key] = GroupReader(self, channel, group, start)
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
