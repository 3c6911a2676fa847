"""A steady publish load and consumers that check what they got, for failover tests.

A :class:`SteadyProducer` sends one message at a time over ``/ws/producer/C`` and keeps what was
acknowledged; an ``unavailable`` reply (a failover under way) is counted and the next message goes
on. A :class:`Tail` reads one consumer socket and fails the test if the socket closes.

Through a balancer, where sockets break and come back elsewhere, the client library does the
retrying: :class:`SteadyLoad` publishes with ``app.client.Producer`` (each message sent again until
stored, once), and :func:`following` gives several ``app.client.Consumer`` that reconnect and
resume by themselves (:class:`Followers`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from app.client import Consumer, Message, Producer
from tests.support import events_of, recv_json, timeout


class SteadyProducer:
    """Publishes ``{"seq": n}`` on one channel until stopped; ``acked``: seq -> entry id."""

    def __init__(self, url: str, channel: str, interval: float = 0.01) -> None:
        self.url, self.channel, self.interval = url, channel, interval
        self.acked: dict[int, str] = {}
        self.refused: list[tuple[int, str]] = []  # (seq, code) of replies that were not acks
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def running(self) -> bool:
        """False once the producer's loop ended (its error is raised by :meth:`stop`)."""
        return self._task is not None and not self._task.done()

    def start(self) -> SteadyProducer:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout(20))

    async def _run(self) -> None:
        seq = 0
        async with connect(f"{self.url}/ws/producer/{self.channel}", open_timeout=timeout(10)) as ws:
            while not self._stop.is_set():
                await ws.send(json.dumps({"seq": seq}))
                reply = await recv_json(ws, within=15)
                if reply["type"] == "ack":
                    self.acked[seq] = reply["id"]
                else:
                    self.refused.append((seq, reply["code"]))
                seq += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval)


class Tail:
    """Everything one consumer socket receives: ``messages`` as (entry id, data)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[tuple[str, Any]] = []
        self.other: list[dict[str, Any]] = []
        self.closed: int | None = None
        self.heard = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                if frame["type"] == "message":
                    self.messages.append((frame["id"], frame["data"]))
                    self.heard.set()
                else:
                    self.other.append(frame)
        finally:
            self.closed = self.ws.close_code if self.ws.close_code is not None else -1

    def ids(self) -> list[str]:
        return [entry_id for entry_id, _ in self.messages]

    async def wait_for(self, entry_id: str, within: float = 15) -> None:
        """Until the message ``entry_id`` (or a later one) arrived; fails if the socket closed."""
        async with asyncio.timeout(timeout(within)):
            while not self.messages or _key(self.messages[-1][0]) < _key(entry_id):
                assert self.closed is None, f"the consumer's socket closed ({self.closed})"
                if self._task.done():
                    self._task.result()  # the reader failed: say why
                self.heard.clear()
                await self.heard.wait()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task  # a failure of the reader is raised here


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


@contextlib.asynccontextmanager
async def tails(*urls: str) -> AsyncIterator[list[Tail]]:
    """One consumer per URL, each past its ``subscribed`` frame."""
    async with contextlib.AsyncExitStack() as stack:
        made: list[Tail] = []
        for url in urls:
            ws = await stack.enter_async_context(connect(url, open_timeout=timeout(10)))
            assert (await recv_json(ws))["type"] == "subscribed"
            made.append(Tail(ws))
        try:
            yield made
        finally:
            for tail in made:
                await tail.close()


def check_delivery(tail: Tail, acked: dict[int, str]) -> None:
    """Every acked message once and in order; nothing else but messages that were refused."""
    ids = tail.ids()
    assert len(ids) == len(set(ids)), "a message was delivered twice"
    assert ids == sorted(ids, key=_key), "messages out of order"
    missing = set(acked.values()) - set(ids)
    assert not missing, f"{len(missing)} acked message(s) never delivered, e.g. {sorted(missing)[:3]}"
    assert tail.closed is None, f"the consumer's socket closed ({tail.closed})"


class Followers:
    """What each of several consumers of one channel received (each reconnects and resumes by
    itself)."""

    def __init__(self, url: str, channel: str, count: int) -> None:
        self.consumers = [Consumer(url, channel, max_backoff=0.5, keepalive=5) for _ in range(count)]
        self.got: list[list[Message]] = [[] for _ in self.consumers]
        self._heard = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._follow(c, g)) for c, g in zip(self.consumers, self.got, strict=True)
        ]

    async def _follow(self, consumer: Consumer, into: list[Message]) -> None:
        try:
            async with events_of(consumer) as events:
                async for event in events:
                    assert isinstance(event, Message), f"a consumer was told of a gap: {event}"
                    into.append(event)
                    self._heard.set()
        finally:
            self._heard.set()

    async def have(self, acked: list[str], within: float = 60) -> None:
        """Until each consumer got as many messages as were acked; then each has every acked
        message, once and in order."""
        await self._until(lambda received: len(received) >= len(acked), within)
        for received in self.got:
            assert [m.id for m in received] == acked

    async def cover(self, acked: list[str], within: float = 60) -> None:
        """Until each consumer got the last acked message; then each has every acked message, once
        and in order, and perhaps others: entries a failover took away before a replica had them
        (acked to nobody; docs/design.md, "What a consumer may see across a failover")."""
        await self._until(
            lambda received: bool(received) and _key(received[-1].id) >= _key(acked[-1]), within
        )
        for received in self.got:
            ids = [m.id for m in received]
            assert len(ids) == len(set(ids)), "a message was delivered twice"
            assert ids == sorted(ids, key=_key), "messages out of order"
            assert not set(acked) - set(ids), "an acked message never arrived"

    async def _until(self, done: Callable[[list[Message]], bool], within: float) -> None:
        async with asyncio.timeout(timeout(within)):
            while not all(done(received) for received in self.got):
                for task in self._tasks:
                    if task.done():
                        task.result()  # a consumer failed: say why
                self._heard.clear()
                await self._heard.wait()

    @property
    def reconnects(self) -> int:
        return sum(c.reconnects for c in self.consumers)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def following(url: str, channel: str, count: int) -> AsyncIterator[Followers]:
    """``count`` consumers of ``channel``, each past its first ``subscribed``."""
    followers = Followers(url, channel, count)
    try:
        await asyncio.wait_for(asyncio.gather(*(c.subscribed() for c in followers.consumers)), timeout(30))
        yield followers
    finally:
        await followers.close()


# a refused attempt costs the backoff only (~0.25 s): enough of them to outlast a failover of a
# minute, where HAProxy answers 503 at once for want of a ready instance
_ATTEMPTS = int(timeout(300))


class SteadyLoad:
    """One message after the other through the balancer (each stored once, in order, even when
    sent again) until stopped; ``acked``: the ids, in the order they were acknowledged."""

    def __init__(self, url: str, channel: str) -> None:
        self.producer = Producer(
            url, channel, window=1, max_backoff=0.5, attempts=_ATTEMPTS, attempt_timeout=2
        )
        self.acked: list[str] = []
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SteadyLoad:
        await self.producer.__aenter__()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                self.acked.append(await self.producer.publish({"n": n}))
                self._progress.set()
                n += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.02)  # a rate, not a wait for an event
        finally:
            self._progress.set()

    async def until(self, more: int, within: float = 60) -> None:
        """Until ``more`` messages beyond those acked so far are acked."""
        assert self._task is not None
        target = len(self.acked) + more
        async with asyncio.timeout(timeout(within)):
            while len(self.acked) < target:
                if self._task.done():
                    self._task.result()  # the producer failed: say why
                    raise AssertionError("the producer stopped")
                self._progress.clear()
                await self._progress.wait()

    async def stop(self) -> None:
        """Stop publishing (the message in flight is acked first); again does nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        assert self._task is not None
        try:
            await asyncio.wait_for(self._task, timeout(60))
        finally:
            await self.producer.__aexit__(None, None, None)

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
