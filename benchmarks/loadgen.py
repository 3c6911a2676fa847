"""One load-generator process: ``python -m benchmarks.loadgen`` (started by ``benchmarks.fleet``).

It connects the consumers and producers of its ``WorkerPlan`` and follows the line protocol of
``benchmarks.plan``. The per-message work is kept to a regex over the frame's bytes (``seq`` and
``ts``), a clock read, a histogram increment and an order check; everything else is counted per
group and reported once, at the end. A consumer is one subscription: on its own connection
(``/ws/consumer/C``), or one of several sharing a ``/ws`` connection (``Multiplexed``), which hands
each frame to the consumer of the channel it names (one more regex), or a Server-Sent Events stream
(an ``http://`` URL: ``/channels/C/events``, :mod:`benchmarks.sseclient`), whose ``message`` events'
data go through the same path as a WebSocket frame's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import resource
import sys
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

import orjson
import uvloop

from benchmarks import plan as wire
from benchmarks import sseclient, wsclient
from benchmarks.histogram import Histogram
from benchmarks.plan import GroupPlan, ProducerPlan, WorkerPlan

_SEQ_TS = re.compile(rb'"seq":\s*(\d+),\s*"ts":\s*([0-9.]+)').search
_CHANNEL = re.compile(rb'"channel":\s*"([^"]*)"').search  # the first: a frame's own, before its data
_PAYLOAD = wire.PAYLOAD
_ERROR_REPLY = b'{"type":"error"'
_MAX_ERRORED = 10_000  # seqs of refused messages kept per producer
_MAX_FAILURES = 5  # failure texts kept per group


def emit(event: str, **fields: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps({"event": event, **fields}) + b"\n")
    sys.stdout.buffer.flush()


def now_ms() -> float:
    return time.time() * 1000.0


class GroupStats:
    """What the consumers of one group share: the latency histogram and counters."""

    def __init__(self, plan: GroupPlan) -> None:
        self.plan = plan
        self.latency = Histogram()
        self.connect = Histogram()
        self.received = 0
        self.foreign = 0  # frames that were neither messages with a seq nor known control frames
        self.last_rx_ms = 0.0
        self.started_ms = 0.0  # when its connections began
        self.connected_ms = 0.0  # when the last of them was up
        self.failed = 0
        self.failures: list[str] = []

    def failure(self, text: str) -> None:
        self.failed += 1
        if len(self.failures) < _MAX_FAILURES:
            self.failures.append(text)


class Consumer:
    """One consumer connection: order, duplicates and loss by ``seq``; latency by ``ts``."""

    __slots__ = (
        "caught_up_ms",
        "channel",
        "connection",
        "disorder",
        "dups",
        "errors",
        "expected",
        "gaps",
        "group",
        "last_seq",
        "relay_frames",
        "since_ms",
        "skipped",
        "subscribed",
        "unique",
        "url",
    )

    def __init__(self, url: str, channel: str, group: GroupStats, relay_frames: bool) -> None:
        self.url = url
        self.channel = channel
        self.group = group
        self.relay_frames = relay_frames
        self.connection: wsclient.WsConnection | sseclient.SseConnection | None = None
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_seq = group.plan.first_seq - 1
        self.unique = 0  # messages received in order (each seq once)
        self.dups = 0  # a seq not above the last one: duplicate or out of order
        self.skipped = 0  # seqs jumped over (a hole; for queue semantics, the other consumers' share)
        self.gaps = 0
        self.errors = 0
        self.disorder = 0  # SSE: a message id not above the previous one on the stream
        self.expected = 0
        self.since_ms = math.inf
        self.caught_up_ms = 0.0  # receipt of the first message published after it connected

    def on_text(self, data: bytes) -> None:
        match = _SEQ_TS(data)
        if match is None:
            self._control(data)
            return
        now = time.time() * 1000.0
        ts = float(match[2])
        group = self.group
        group.latency.add(now - ts)
        group.received += 1
        group.last_rx_ms = now
        seq = int(match[1])
        if seq > self.last_seq:
            if seq != self.last_seq + 1:
                self.skipped += seq - self.last_seq - 1
            self.last_seq = seq
            self.unique += 1
        else:
            self.dups += 1
        if not self.caught_up_ms and ts >= self.since_ms:
            self.caught_up_ms = now

    def _control(self, data: bytes) -> None:
        kind = _frame_type(data) if self.relay_frames else None
        if kind == "subscribed":
            if not self.subscribed.done():
                self.subscribed.set_result(None)
        elif kind == "gap":
            self.gaps += 1
        elif kind == "error":
            self.errors += 1
            if not self.subscribed.done():  # a refused subscription: fail now, not at the timeout
                self.subscribed.set_exception(Refused(data[:200].decode(errors="replace")))
        else:
            self.group.foreign += 1

    # -- a Server-Sent Events stream's other events (sseclient.EventHandler) ------------------------

    def on_subscribed(self) -> None:
        if not self.subscribed.done():
            self.subscribed.set_result(None)

    def on_gap(self) -> None:
        self.gaps += 1

    def on_disorder(self) -> None:
        self.disorder += 1

    def on_unknown(self, block: bytes) -> None:
        self.group.foreign += 1

    @property
    def dropped(self) -> bool:
        return self.connection is not None and self.connection.closed.done()


def _frame_type(data: bytes) -> Any:
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return frame.get("type") if isinstance(frame, dict) else None


class Refused(Exception):
    """The relay answered a subscription with an ``error`` frame."""


class Multiplexed:
    """The frames of one ``/ws`` connection, to the consumers of its subscriptions by channel."""

    def __init__(self, consumers: list[Consumer], group: GroupStats) -> None:
        self.by_channel = {c.channel.encode(): c for c in consumers}
        self.group = group
        self.welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_text(self, data: bytes) -> None:
        match = _CHANNEL(data)
        consumer = None if match is None else self.by_channel.get(match[1])
        if consumer is not None:
            consumer.on_text(data)
        elif _frame_type(data) == "connected":
            if not self.welcomed.done():
                self.welcomed.set_result(None)
        else:
            self.group.foreign += 1

    def subscribe(self, connection: wsclient.WsConnection) -> None:
        """A ``subscribe`` frame per consumer, all at once (each names its ``ref``), live from now."""
        for ref, channel in enumerate(self.by_channel):
            frame = {"type": "subscribe", "channel": channel.decode(), "ref": ref}
            connection.send_text(orjson.dumps(frame))
        connection.flush()


class ProducerStats:
    def __init__(self) -> None:
        self.ack_latency = Histogram()
        self.connected = 0
        self.failed = 0
        self.failures: list[str] = []


class Producer:
    """Publishes at a fixed rate, or keeps ``window`` messages in flight (``rate`` 0)."""

    def __init__(self, plan: ProducerPlan, stats: ProducerStats, pad: int) -> None:
        self.plan = plan
        self.stats = stats
        self.pad = b"x" * pad
        self.connection: wsclient.WsConnection | None = None
        self.in_flight: deque[tuple[int, float]] = deque()
        self.next_seq = plan.first_seq
        self.attempted = 0  # sends due by the clock, including those skipped
        self.sent = 0
        self.skipped = 0  # due while ``window`` messages were unanswered
        self.acked = 0
        self.last_acked = plan.first_seq - 1
        self.errored: list[int] = []
        self.refill = False  # window mode: each reply sends the next message
        self.elapsed_s = 0.0  # from the first send to the last

    def on_text(self, data: bytes) -> None:
        if not self.in_flight:
            return  # a reply to nothing we sent: ignored (counted as unanswered elsewhere)
        seq, sent_at = self.in_flight.popleft()
        self.stats.ack_latency.add((time.perf_counter() - sent_at) * 1000.0)
        if data.startswith(_ERROR_REPLY):
            if len(self.errored) < _MAX_ERRORED:
                self.errored.append(seq)
        else:
            self.acked += 1
            self.last_acked = seq
        if self.refill:
            self._send()

    def _send(self) -> None:
        assert self.connection is not None
        seq = self.next_seq
        self.next_seq += 1
        self.connection.send_text(_PAYLOAD % (seq, time.time() * 1000.0, self.pad))
        self.in_flight.append((seq, time.perf_counter()))
        self.sent += 1

    async def run(self, stop: asyncio.Event) -> None:
        if self.connection is None:
            return
        if self.plan.phase_s:
            await _sleep_unless(stop, self.plan.phase_s)
        started = time.perf_counter()
        if self.plan.rate > 0:
            await self._at_rate(stop)
        else:
            await self._windowed(stop)
        self.elapsed_s = time.perf_counter() - started

    async def _at_rate(self, stop: asyncio.Event) -> None:
        assert self.connection is not None
        rate, window = self.plan.rate, self.plan.window
        total = int(rate * self.plan.duration_s)
        start = time.perf_counter()
        while self.attempted < total and not stop.is_set():
            due = min(int((time.perf_counter() - start) * rate) + 1, total) - self.attempted
            for _ in range(due):
                if len(self.in_flight) < window:
                    self._send()
                else:
                    self.skipped += 1
            self.attempted += due
            self.connection.flush()
            next_at = start + self.attempted / rate
            await _sleep_unless(stop, max(0.001, next_at - time.perf_counter()))

    async def _windowed(self, stop: asyncio.Event) -> None:
        assert self.connection is not None
        self.refill = True
        for _ in range(self.plan.window):
            self._send()
        self.connection.flush()
        await _sleep_unless(stop, self.plan.duration_s)
        self.refill = False

    async def settle(self, within: float) -> None:
        """Wait (bounded) for the replies to every message sent."""
        deadline = time.perf_counter() + within
        while self.in_flight and time.perf_counter() < deadline:
            if self.connection is None or self.connection.closed.done():
                return
            await asyncio.sleep(0.01)

    def report(self) -> dict[str, Any]:
        return {"first": self.plan.first_seq, "last": self.last_acked, "errored": self.errored}


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        print(f"loadgen: {task.get_name()} failed: {task.exception()!r}", file=sys.stderr, flush=True)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class Worker:
    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.groups = [GroupStats(g) for g in plan.groups]
        self.consumers: list[list[Consumer]] = [
            [Consumer(url, ch, stats, plan.relay_frames) for url, ch in stats.plan.consumers]
            for stats in self.groups
        ]
        self.producer_stats = ProducerStats()
        self.producers = [Producer(p, self.producer_stats, plan.pad) for p in plan.producers]
        self.stop = asyncio.Event()
        self.expecting = False
        self.started = (time.perf_counter(), time.process_time())
        self.go_at: tuple[float, float] | None = None
        self.go_ms = 0.0
        self.tasks: list[asyncio.Task[None]] = []

    # -- connecting --------------------------------------------------------------------------------

    async def connect_group(self, index: int) -> None:
        stats, consumers = self.groups[index], self.consumers[index]
        gate = asyncio.Semaphore(stats.plan.concurrency)
        stats.started_ms = now_ms()

        multiplex = stats.plan.multiplex

        async def one(start: int) -> None:
            async with gate:
                if multiplex:
                    await self._open_multiplexed(consumers[start : start + multiplex], stats)
                else:
                    await self._open_consumer(consumers[start], stats)

        await asyncio.gather(*(one(start) for start in range(0, len(consumers), multiplex or 1)))
        stats.connected_ms = now_ms()

    async def _open_consumer(self, consumer: Consumer, stats: GroupStats) -> None:
        started = time.perf_counter()
        consumer.since_ms = now_ms()
        timeout = self.plan.connect_timeout_s
        try:
            if consumer.url.startswith("http://"):  # a Server-Sent Events stream
                consumer.connection = await sseclient.connect(consumer.url, consumer, timeout)
            else:
                consumer.connection = await wsclient.connect(consumer.url, consumer.on_text, timeout)
            if self.plan.relay_frames:
                await asyncio.wait_for(consumer.subscribed, timeout)
        except (OSError, TimeoutError, wsclient.HandshakeFailed, ValueError, Refused) as exc:
            stats.failure(f"{consumer.url}: {type(exc).__name__}: {exc}")
            if consumer.connection is not None:
                consumer.connection.abort()
            consumer.connection = None
            return
        stats.connect.add((time.perf_counter() - started) * 1000.0)

    async def _open_multiplexed(self, consumers: list[Consumer], stats: GroupStats) -> None:
        """One ``/ws`` connection: its ``connected`` frame, then every subscription answered."""
        started = time.perf_counter()
        mux = Multiplexed(consumers, stats)
        connection: wsclient.WsConnection | None = None
        timeout = self.plan.connect_timeout_s
        try:
            async with asyncio.timeout(timeout):
                connection = await wsclient.connect(consumers[0].url, mux.on_text, timeout)
                await mux.welcomed
                for consumer in consumers:
                    consumer.since_ms = now_ms()
                mux.subscribe(connection)
                answers = await asyncio.gather(*(c.subscribed for c in consumers), return_exceptions=True)
            refused = next((a for a in answers if isinstance(a, BaseException)), None)
            if refused is not None:
                raise refused
        except (OSError, TimeoutError, wsclient.HandshakeFailed, ValueError, Refused) as exc:
            for consumer in consumers:
                stats.failure(f"{consumer.url} {consumer.channel}: {type(exc).__name__}: {exc}")
            if connection is not None:
                connection.abort()
            return
        for consumer in consumers:
            consumer.connection = connection
        stats.connect.add((time.perf_counter() - started) * 1000.0)

    async def connect_producers(self) -> None:
        gate = asyncio.Semaphore(64)

        async def one(producer: Producer) -> None:
            async with gate:
                try:
                    producer.connection = await wsclient.connect(
                        producer.plan.url, producer.on_text, self.plan.connect_timeout_s
                    )
                    self.producer_stats.connected += 1
                except (OSError, TimeoutError, wsclient.HandshakeFailed, ValueError) as exc:
                    self.producer_stats.failed += 1
                    if len(self.producer_stats.failures) < _MAX_FAILURES:
                        self.producer_stats.failures.append(f"{producer.plan.url}: {exc}")

        await asyncio.gather(*(one(p) for p in self.producers))

    # -- phases ------------------------------------------------------------------------------------

    def go(self) -> None:
        self.go_at = (time.perf_counter(), time.process_time())
        self.go_ms = now_ms()
        self._spawn(self._produce())
        for index, stats in enumerate(self.groups):
            if stats.plan.connect_after_s is not None:
                self._spawn(self._deferred(index, stats.plan.connect_after_s))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.append(task)  # keeps it referenced
        task.add_done_callback(_log_failure)

    async def _deferred(self, index: int, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.connect_group(index)

    async def _produce(self) -> None:
        await asyncio.gather(*(p.run(self.stop) for p in self.producers))
        await asyncio.gather(*(p.settle(self.plan.ack_timeout_s) for p in self.producers))
        channels: dict[str, dict[str, Any]] = {p.plan.channel: p.report() for p in self.producers}
        emit("produced", channels=channels)

    def set_expected(self, expected: dict[str, dict[str, Any]]) -> None:
        for stats, consumers in zip(self.groups, self.consumers, strict=True):
            first = stats.plan.first_seq
            for consumer in consumers:
                info = expected.get(consumer.channel)
                if info is None or consumer.connection is None:
                    continue  # one that never connected is reported as a failure, not as loss
                last = int(info["last"])
                refused = sum(1 for seq in info.get("errored", ()) if first <= seq <= last)
                consumer.expected = max(0, last - first + 1 - refused)
        self.expecting = True

    async def report_progress(self) -> None:
        for _ in range(10**9):  # bounded by the worker's deadline
            await asyncio.sleep(0.1 if self.expecting else self.plan.progress_s)
            emit("progress", **self.progress())

    def progress(self) -> dict[str, Any]:
        everyone = [c for group in self.consumers for c in group]
        return {
            "worker": self.plan.index,
            "received": sum(g.received for g in self.groups),
            "unique": sum(c.unique for c in everyone),
            "connected": sum(1 for c in everyone if c.connection is not None),
            "failed": sum(g.failed for g in self.groups) + self.producer_stats.failed,
            "incomplete": sum(1 for c in everyone if c.unique < c.expected) if self.expecting else None,
            "caught_up": {
                g.plan.name: sum(1 for c in cs if c.caught_up_ms)
                for g, cs in zip(self.groups, self.consumers, strict=True)
            },
            "sent": sum(p.sent for p in self.producers),
            "acked": sum(p.acked for p in self.producers),
        }

    def failures(self) -> list[str]:
        texts = [text for g in self.groups for text in g.failures] + self.producer_stats.failures
        return texts[:_MAX_FAILURES]

    # -- the end -----------------------------------------------------------------------------------

    def result(self, timed_out: bool) -> dict[str, Any]:
        wall0, cpu0 = self.started
        go_wall, go_cpu = self.go_at or self.started
        wall, cpu = time.perf_counter(), time.process_time()
        return {
            "worker": self.plan.index,
            "timed_out": timed_out,
            "groups": [self._group_result(g, cs) for g, cs in zip(self.groups, self.consumers, strict=True)],
            "producers": self._producer_result(),
            "process": {
                "cpu_s": cpu - cpu0,
                "wall_s": wall - wall0,
                "cpu_s_since_go": cpu - go_cpu,
                "wall_s_since_go": wall - go_wall,
                "go_ms": self.go_ms,
            },
        }

    def _group_result(self, stats: GroupStats, consumers: list[Consumer]) -> dict[str, Any]:
        connected = [c for c in consumers if c.connection is not None]
        caught = [c.caught_up_ms for c in consumers if c.caught_up_ms]
        return {
            "name": stats.plan.name,
            "consumers": len(consumers),
            "connected": len(connected),
            "failed": stats.failed,
            "failures": stats.failures,
            "connect_ms": stats.connect.to_sparse(),
            "connect_max_ms": stats.connect.max_ms,
            "started_ms": stats.started_ms,
            "connected_ms": stats.connected_ms,
            "received": stats.received,
            "unique": sum(c.unique for c in consumers),
            "expected": sum(c.expected for c in consumers),
            "loss": sum(max(0, c.expected - c.unique) for c in consumers),
            "consumers_with_loss": sum(1 for c in consumers if c.unique < c.expected),
            "dups": sum(c.dups for c in consumers),
            "skipped": sum(c.skipped for c in consumers),
            "gaps": sum(c.gaps for c in consumers),
            "disorder": sum(c.disorder for c in consumers),
            "errors": sum(c.errors for c in consumers),
            "foreign": stats.foreign,
            "dropped": sum(1 for c in connected if c.dropped),
            "latency": stats.latency.to_sparse(),
            "latency_max_ms": stats.latency.max_ms,
            "last_rx_ms": stats.last_rx_ms,
            "caught_up": len(caught),
            "caught_up_last_ms": max(caught, default=0.0),
        }

    def _producer_result(self) -> dict[str, Any]:
        stats = self.producer_stats
        return {
            "count": len(self.producers),
            "connected": stats.connected,
            "failed": stats.failed,
            "failures": stats.failures,
            "due": sum(p.attempted for p in self.producers),  # at a fixed rate, by the clock
            "rate": sum(p.plan.rate for p in self.producers),
            "elapsed_s": max((p.elapsed_s for p in self.producers), default=0.0),
            "sent": sum(p.sent for p in self.producers),
            "skipped": sum(p.skipped for p in self.producers),
            "acked": sum(p.acked for p in self.producers),
            "errors": sum(len(p.errored) for p in self.producers),
            "unanswered": sum(len(p.in_flight) for p in self.producers),
            "ack_latency": stats.ack_latency.to_sparse(),
            "ack_max_ms": stats.ack_latency.max_ms,
        }

    def close(self) -> None:
        for group in self.consumers:
            for consumer in group:
                if consumer.connection is not None:
                    consumer.connection.close()
        for producer in self.producers:
            if producer.connection is not None:
                producer.connection.close()


async def _commands() -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _next_command(commands: asyncio.StreamReader) -> tuple[str, bytes]:
    line = await commands.readline()
    if not line:
        os._exit(2)  # the parent is gone: nobody to report to
    name, _, rest = line.strip().partition(b" ")
    return name.decode(), rest


async def _await_command(commands: asyncio.StreamReader, wanted: str) -> None:
    for _ in range(1000):
        name, _rest = await _next_command(commands)
        if name == wanted:
            return


async def _connect(worker: Worker, commands: asyncio.StreamReader) -> None:
    """The consumers that connect before ``GO``, and the producers (first, with ``producers_first``)."""
    if worker.plan.producers_first:  # the parent reads the servers in between: growth is the consumers'
        await worker.connect_producers()
        emit("producers", **worker.progress())
        await _await_command(commands, wire.CONNECT)
    for index, group in enumerate(worker.plan.groups):
        if group.connect_after_s is None:
            await worker.connect_group(index)
    if not worker.plan.producers_first:
        await worker.connect_producers()


async def run() -> None:
    commands = await _commands()
    plan = WorkerPlan.from_json(await commands.readline())
    worker = Worker(plan)

    def hard_deadline() -> None:
        emit("result", **worker.result(timed_out=True))
        os._exit(3)

    asyncio.get_running_loop().call_later(plan.deadline_s, hard_deadline)
    await _connect(worker, commands)
    emit("ready", **worker.progress(), failures=worker.failures())
    progress = asyncio.create_task(worker.report_progress())
    for _ in range(1000):  # a handful of commands make a run
        name, rest = await _next_command(commands)
        if name == wire.GO:
            worker.go()
        elif name == wire.STOP:
            worker.stop.set()
        elif name == wire.EXPECT:
            worker.set_expected(orjson.loads(rest))
        elif name == wire.FINISH:
            break
    progress.cancel()
    emit("result", **worker.result(timed_out=False))
    worker.close()
    await asyncio.sleep(0.05)  # let the close frames go out


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(run())
    os._exit(0)  # skip interpreter teardown of thousands of transports


if __name__ == "__main__":
    main()
