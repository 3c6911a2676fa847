"""One measured run of load against a target, in phases, with the server and Redis figures around it.

    start workers                                                snapshot: RSS, Redis connections
      (``producers_first``: producers up ─▶ snapshot again ─▶ CONNECT)
      ─▶ ready (consumers and producers connected)               snapshot: RSS, Redis connections
        GO ─▶ producers run (STOP early when ``stop_when`` says)   snapshot: server CPU
        produced ─▶ EXPECT (what each channel must deliver) ─▶ drain until complete or ``drain_s``
        FINISH ─▶ results                                          snapshot: server CPU

``run`` goes through the phases in a row; a scenario may drive ``Trial`` itself to interleave two
(M1 keeps two sets of consumers connected at once and loads them in turn). Every phase has a
timeout; the workers end by themselves at their deadline in any case.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from benchmarks import plan as wire
from benchmarks.fleet import Fleet
from benchmarks.histogram import Summary
from benchmarks.measure import RedisProbe, ServerSnapshot, delta
from benchmarks.plan import GroupPlan, ProducerPlan, WorkerPlan
from benchmarks.servers import Target

Log = Callable[[str], None]


@dataclass
class Load:
    label: str  # for progress lines, e.g. "relay S1"
    groups: list[GroupPlan] = field(default_factory=list)
    producers: list[ProducerPlan] = field(default_factory=list)
    max_s: float = 60.0  # production is stopped after this long in any case
    drain_s: float = 5.0
    stop_when: Callable[[dict[str, Any]], bool] | None = None  # on the summed progress
    # groups given a load-generator process of their own, with every producer: what they measure
    # is then the servers' delay, not the time the other groups keep the client busy
    separate: tuple[str, ...] = ()
    # producers connect before the consumers, and RSS growth is counted from then: the consumers' own
    producers_first: bool = False


@dataclass
class Group:
    """One consumer group's figures, merged over the workers."""

    name: str
    counts: dict[str, int]
    latency: Summary
    connect: Summary
    started_ms: float
    connected_ms: float
    last_rx_ms: float
    caught_up_last_ms: float
    failures: list[str]


@dataclass
class Outcome:
    groups: dict[str, Group]
    producers: dict[str, float]  # counts summed over workers; ``rate`` summed, ``elapsed_s`` the longest
    ack_latency: Summary
    channels: dict[str, dict[str, Any]]  # what the producers had acknowledged, per channel
    go_ms: float
    server_cpu_s: float | None  # GO to the end of the drain, summed over the target's processes
    server_rss_kb: float | None  # growth from before connecting to all connected
    redis_conns: int | None  # peak Redis connections added
    redis_cpu_s: float | None
    loadgen_cpu_pct: float | None  # busiest worker since GO, % of one core
    loadgen_cpu_pct_life: float | None  # busiest worker over its whole life (connecting included)
    workers: list[dict[str, Any]]

    @property
    def messages(self) -> int:
        """Messages stored: acknowledged, in every channel."""
        return sum(max(0, c["last"] - c["first"] + 1 - len(c["errored"])) for c in self.channels.values())

    @property
    def connections(self) -> int:
        return sum(g.counts["connected"] for g in self.groups.values()) + int(
            self.producers.get("connected", 0)
        )


def _split(load: Load, target: Target, workers: int, deadline_s: float) -> list[WorkerPlan]:
    plans = []
    own = [g for g in load.groups if g.name in load.separate]
    shared = [g for g in load.groups if g.name not in load.separate]
    producers = [] if own else load.producers
    for index in range(workers):
        groups = [_share(g, index, workers) for g in shared]
        plans.append(
            WorkerPlan(
                index=index,
                relay_frames=target.relay_frames,
                groups=[g for g in groups if g.consumers],
                producers=producers[index::workers],
                deadline_s=deadline_s,
                producers_first=load.producers_first,
            )
        )
    if own:
        plans.append(
            WorkerPlan(
                index=workers,
                relay_frames=target.relay_frames,
                groups=own,
                producers=load.producers,
                deadline_s=deadline_s,
                producers_first=load.producers_first,
            )
        )
    return [p for p in plans if p.groups or p.producers]


def _share(group: GroupPlan, index: int, workers: int) -> GroupPlan:
    """Worker ``index``'s share of ``group``: every ``workers``-th connection, subscriptions and all."""
    per = group.multiplex or 1
    sockets = [group.consumers[i : i + per] for i in range(0, len(group.consumers), per)]
    return replace(group, consumers=[c for socket in sockets[index::workers] for c in socket])


def _connect_bound(load: Load) -> float:
    connections = sum(len(g.consumers) for g in load.groups) + len(load.producers)
    return 30.0 + connections / 50.0


def bound_s(load: Load) -> float:
    """The longest a trial of ``load`` may take, every phase at its timeout."""
    deferred_s = max([g.connect_after_s or 0.0 for g in load.groups], default=0.0)
    connecting_s = (2 if load.producers_first else 1) * _connect_bound(load)  # producers, then consumers
    return connecting_s + deferred_s + load.max_s + load.drain_s + 60.0


async def run(load: Load, target: Target, workers: int, redis: RedisProbe, log: Log) -> Outcome:
    trial = await Trial.start(load, target, workers, redis, log)
    try:
        await trial.connect()
        await trial.measure()
        return await trial.finish()
    finally:
        await trial.close()


class Trial:
    """One load's fleet, phase by phase: ``start``, ``connect``, ``measure``, ``finish``; ``close`` always."""

    def __init__(
        self,
        fleet: Fleet,
        load: Load,
        target: Target,
        redis: RedisProbe,
        log: Log,
        before: tuple[ServerSnapshot, int | None, float | None],
    ) -> None:
        self.fleet, self.load, self.target, self.redis, self.log = fleet, load, target, redis, log
        self.started = time.monotonic()
        self.before, self.redis_before, self.redis_cpu_before = before
        self.connected = self.before
        self.redis_peak: int | None = None
        self.redis_connected: int | None = None
        self.go_ms: float = 0.0
        self.go_cpu: float | None = None
        self.after = self.before
        self.channels: dict[str, dict[str, Any]] = {}

    @classmethod
    async def start(
        cls, load: Load, target: Target, workers: int, redis: RedisProbe, log: Log, longer_s: float = 0.0
    ) -> Trial:
        """Start the load's workers (they live ``longer_s`` more than it needs: for another trial)."""
        # the readings come first: the workers start connecting as soon as they are up
        before = ServerSnapshot.take(target.pids), redis.clients(), redis.cpu_seconds()
        fleet = await Fleet.start(_split(load, target, workers, bound_s(load) + longer_s))
        return cls(fleet, load, target, redis, log, before)

    async def connect(self) -> ServerSnapshot:
        """Until every worker is ready; the servers' snapshot then (RSS growth: from ``before``)."""
        connect_s = _connect_bound(self.load)
        started = time.monotonic()
        if self.load.producers_first:
            await self.fleet.producers_up(connect_s)
            self.before = ServerSnapshot.take(self.target.pids)
            self.fleet.command(wire.CONNECT)
        ready = await self.fleet.ready(connect_s)
        _log_ready(self.log, self.load, ready, time.monotonic() - started)
        self.connected = ServerSnapshot.take(self.target.pids)
        self.redis_peak = self.redis_connected = self.redis.clients()
        return self.connected

    @property
    def redis_added(self) -> int | None:
        """Redis connections added from ``start`` to all connected (the peak may include later ones)."""
        now, before = self.redis_connected, self.redis_before
        return None if now is None or before is None else now - before

    async def measure(self) -> None:
        """GO, production, EXPECT and the drain; server CPU is counted over these."""
        self.fleet.command(wire.GO)
        self.go_ms, self.go_cpu = time.time() * 1000.0, ServerSnapshot.take(self.target.pids).cpu_s
        self.channels = await _production(self.fleet, self.load, self.log)
        readings = (self.redis_peak, self.redis.clients())
        self.redis_peak = max((c for c in readings if c is not None), default=None)
        self.fleet.command(wire.EXPECT, self.channels)
        await _drain(self.fleet, self.load, self.target, self.channels, self.log)
        self.after = ServerSnapshot.take(self.target.pids)

    async def finish(self) -> Outcome:
        results = await self.fleet.finish(within=30)
        self.log(f"{self.load.label}: done in {time.monotonic() - self.started:.1f}s")
        peak, before = self.redis_peak, self.redis_before
        return _outcome(
            results,
            self.channels,
            self.go_ms,
            server_cpu_s=delta(self.after.cpu_s, self.go_cpu),
            server_rss_kb=delta(self.connected.rss_kb, self.before.rss_kb),
            redis_conns=None if peak is None or before is None else peak - before,
            redis_cpu_s=delta(self.redis.cpu_seconds(), self.redis_cpu_before),
        )

    async def close(self) -> None:
        await self.fleet.close()


def _log_ready(log: Log, load: Load, ready: list[dict[str, Any]], seconds: float) -> None:
    connected = sum(r["connected"] for r in ready)
    failed = sum(r["failed"] for r in ready)
    wanted = sum(len(g.consumers) for g in load.groups if g.connect_after_s is None)
    line = f"{load.label}: {connected}/{wanted} consumers and {len(load.producers)} producers up in {seconds:.1f}s"
    if failed:
        first = next((f for r in ready for f in r.get("failures", [])), "")
        line += f"; {failed} failed (first: {first})"
    log(line)


async def _production(fleet: Fleet, load: Load, log: Log) -> dict[str, dict[str, Any]]:
    started = time.monotonic()
    stop_at = started + load.max_s
    stopped = False
    printed, received = started, 0
    while not fleet.all_produced():
        now = time.monotonic()
        if now > stop_at + 30.0:
            break  # produced() below raises with the reason
        if not stopped and (now > stop_at or (load.stop_when is not None and load.stop_when(fleet.totals()))):
            fleet.command(wire.STOP)
            stopped = True
        if now - printed >= 1.0:
            received = _log_progress(log, load.label, fleet.totals(), now - started, received, now - printed)
            printed = now
        await asyncio.sleep(0.1)
    return await fleet.produced(within=5.0)


def _log_progress(
    log: Log, label: str, totals: dict[str, Any], elapsed: float, before: int, span: float
) -> int:
    received = int(totals.get("received", 0))
    parts = [f"{label}: {elapsed:5.1f}s"]
    if totals.get("connected"):
        parts.append(f"delivered {received:,} (+{(received - before) / span:,.0f}/s)")
    if totals.get("sent"):
        parts.append(f"sent {totals['sent']:,}, acked {totals.get('acked', 0):,}")
    line = " ".join(parts[:2]) + "".join(", " + part for part in parts[2:])
    storm = totals.get("caught_up", {}).get("storm")
    if storm is not None:
        line += f", storm caught up {storm:,}"
    log(line)
    return received


async def _drain(
    fleet: Fleet, load: Load, target: Target, channels: dict[str, dict[str, Any]], log: Log
) -> None:
    """Until every consumer has every message (queue semantics: until all messages are taken)."""
    if not load.groups:
        return
    stored = sum(max(0, c["last"] - c["first"] + 1 - len(c["errored"])) for c in channels.values())
    deadline = time.monotonic() + load.drain_s
    while time.monotonic() < deadline:
        totals = fleet.totals()
        if target.queue_semantics:
            if totals.get("unique", 0) >= stored:
                return
        elif not totals.get("incomplete_unknown") and totals.get("incomplete", 0) == 0:
            return
        await asyncio.sleep(0.05)
    log(f"{load.label}: drain ended after {load.drain_s:.0f}s with deliveries missing")


def _outcome(
    results: list[dict[str, Any]], channels: dict[str, dict[str, Any]], go_ms: float, **figures: Any
) -> Outcome:
    producers: dict[str, float] = {}
    for result in results:
        for key, value in result["producers"].items():
            if key == "elapsed_s":
                producers[key] = max(producers.get(key, 0.0), value)
            elif isinstance(value, int | float):
                producers[key] = producers.get(key, 0) + value
    return Outcome(
        groups=_merge_groups(results),
        producers=producers,
        ack_latency=Summary(
            [r["producers"]["ack_latency"] for r in results],
            max((r["producers"]["ack_max_ms"] for r in results), default=0.0),
        ),
        channels=channels,
        go_ms=go_ms,
        loadgen_cpu_pct=_busiest(results, "cpu_s_since_go", "wall_s_since_go"),
        loadgen_cpu_pct_life=_busiest(results, "cpu_s", "wall_s"),
        workers=results,
        **figures,
    )


def _busiest(results: list[dict[str, Any]], cpu: str, wall: str) -> float | None:
    shares = [r["process"][cpu] / r["process"][wall] * 100.0 for r in results if r["process"][wall] > 0]
    return max(shares, default=None)


def _merge_groups(results: list[dict[str, Any]]) -> dict[str, Group]:
    parts: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        for group in result["groups"]:
            parts.setdefault(group["name"], []).append(group)
    return {name: _merge(name, pieces) for name, pieces in parts.items()}


def _merge(name: str, pieces: list[dict[str, Any]]) -> Group:
    counts: dict[str, int] = {}
    for piece in pieces:
        for key, value in piece.items():
            if isinstance(value, int) and not isinstance(value, bool):
                counts[key] = counts.get(key, 0) + value
    return Group(
        name=name,
        counts=counts,
        latency=Summary([p["latency"] for p in pieces], max(p["latency_max_ms"] for p in pieces)),
        connect=Summary([p["connect_ms"] for p in pieces], max(p["connect_max_ms"] for p in pieces)),
        started_ms=min(p["started_ms"] for p in pieces),
        connected_ms=max(p["connected_ms"] for p in pieces),
        last_rx_ms=max(p["last_rx_ms"] for p in pieces),
        caught_up_last_ms=max(p["caught_up_last_ms"] for p in pieces),
        failures=[f for p in pieces for f in p["failures"]][:5],
    )
