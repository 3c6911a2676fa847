"""One (channel, group) read for the members on this process (see :mod:`app.groups`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from app import metrics
from app.backoff import Backoff
from app.broker.interface import Delivery, GroupStore
from app.errors import BrokerError, GroupMissing
from app.groups.member import Member, Membership
from app.protocol import streamid
from app.protocol.streamid import StreamId
from app.settings import Settings
from app.wakeup import Wakeup

log = logging.getLogger("relay.groups")


class NewEntries(Protocol):
    """Says when a channel has new entries (the hub, :class:`app.fanout.hub.Hub`)."""

    async def watch(self, channel: str, watcher: Callable[[], None]) -> None:
        """Call ``watcher`` whenever the channel has new entries; raises BrokerError if it cannot."""

    def unwatch(self, channel: str, watcher: Callable[[], None]) -> None: ...


class GroupReader:
    """Reads one channel's group for the members on this process, as the consumer ``consumer``."""

    def __init__(
        self,
        broker: GroupStore,
        entries: NewEntries,
        settings: Settings,
        *,
        consumer: str,
        channel: str,
        group: str,
        start: StreamId | None,
    ) -> None:
        self._broker = broker
        self._entries = entries
        self._settings = settings
        self._consumer = consumer
        self.channel = channel
        self.group = group
        self._start = start
        self._members: list[Membership] = []
        self._turn = 0  # round-robin start for fairness between members
        self._acks: list[tuple[Membership, str]] = []  # to send in the next XACK
        self._wake = Wakeup()
        self._closed = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        idle = settings.group_claim_idle_ms / 1000
        self._touch_every = idle / 3
        self._claim_every = min(max(idle / 4, 0.05), 5.0)
        self._touch_due = 0.0  # loop times: when to touch what members hold, when to look for claims
        self._claim_due = 0.0
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
            await asyncio.wait_for(self.send_acks(), self._settings.redis_timeout)

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

    # -- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._setup()
        except Exception:
            return  # the manager's join() raises it to the members, who leave
        try:
            await self._serve()
        finally:
            self._entries.unwatch(self.channel, self.wake)

    async def _setup(self) -> None:
        try:
            await self._create()
            await self._entries.watch(self.channel, self.wake)
        except BaseException as exc:
            error = exc if isinstance(exc, BrokerError) else BrokerError(f"cannot read the group: {exc!r}")
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: the members may have left already
            raise
        self.ready.set_result(None)

    async def _create(self) -> None:
        await self._broker.group_create(self.channel, self.group, self._start)

    async def _serve(self) -> None:
        """Until closed: send acks, keep what members hold, claim what was abandoned, read."""
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        while not self._closed:
            try:
                await self._turn_once(loop)
                backoff.reset()
            except GroupMissing:
                log.warning("group %r of channel %r vanished; creating it again", self.group, self.channel)
                self._start = streamid.ZERO  # what was published since must not be skipped
                await self._create_again(backoff.failed())
                continue
            except Exception as exc:  # Redis away: back off, keep the members
                log.warning("group %r of channel %r: %s; retrying", self.group, self.channel, exc)
                await backoff.wait()
                continue
            wait = max(0.0, min(self._touch_due, self._claim_due) - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _create_again(self, delay: float) -> None:
        try:
            await self._create()
        except Exception as exc:
            log.warning("group %r of channel %r: %s; retrying", self.group, self.channel, exc)
            await asyncio.sleep(delay)

    async def _turn_once(self, loop: asyncio.AbstractEventLoop) -> None:
        await self.send_acks()
        now = loop.time()
        if now >= self._touch_due:
            self._touch_due = now + self._touch_every
            await self._touch()
        if now >= self._claim_due:
            self._claim_due = now + self._claim_every
            if self._room():  # nobody to give claimed entries to: leave them
                await self._claim()
        await self._read(until=min(self._touch_due, self._claim_due), loop=loop)

    def _room(self) -> int:
        return sum(m.room for m in self._members)

    async def _touch(self) -> None:
        held = [entry_id for m in self._members for entry_id in m.held]
        if held:
            await self._broker.group_touch(self.channel, self.group, self._consumer, held)

    async def _claim(self) -> None:
        settings = self._settings
        claimed = await self._broker.group_claim(
            self.channel,
            self.group,
            self._consumer,
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
            got = await self._broker.group_read(self.channel, self.group, self._consumer, room)
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
