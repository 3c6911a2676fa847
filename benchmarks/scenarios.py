"""The scenarios, each a function of (target, context) returning one table row and its details.

========================  ===========================================================================
``S1``                    fan-out: consumers spread over the instances, one producer at a fixed rate
``S2``                    S1 in steps of doubling rate until p99, loss or the producer's rate fails
``S3``                    ingest: producers keeping a window of messages unacknowledged
``S4``                    idle consumers on the first instance: memory and Redis connections; with
                          ``/ws``, beside them: idle sockets following 10 shared channels each
``M1``                    one ``/ws`` socket following many channels, against a socket per channel
``M2``                    M1 wide: 1,000 ``/ws`` sockets following 10 of 1,000 channels, 1 msg/s each
``E1``                    Server-Sent Events streams against ``/ws/consumer`` sockets, loaded alike
``many-channels``         one consumer and one producer per channel, one message per channel a second
``resume-storm``          consumers resuming a long backlog at once while live consumers are watched
========================  ===========================================================================

Sizes are in ``Params``: ``FULL`` by default, ``QUICK`` for a smoke test, either with some
replaced (``with_sizes``: ``--param NAME=VALUE``).
"""

from __future__ import annotations

import asyncio
import math
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Final

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from benchmarks import trial
from benchmarks.fleet import WorkerFailed
from benchmarks.measure import RedisProbe
from benchmarks.plan import PAYLOAD, GroupPlan, ProducerPlan
from benchmarks.report import Row, ScenarioResult
from benchmarks.servers import Target
from benchmarks.trial import Load, Log, Outcome

SCENARIOS: Final = ("S1", "S2", "S3", "S4", "M1", "M2", "E1", "many-channels", "resume-storm")
DEFAULT: Final = tuple(s for s in SCENARIOS if s != "S2")  # S2 is long: only when named (or "all")


@dataclass(frozen=True)
class Params:
    fanout_consumers: int = 500
    fanout_rate: float = 200.0
    fanout_s: float = 15.0
    fanout_drain_s: float = 5.0
    step_s: float = 8.0
    step_first_rate: float = 100.0
    step_max: int = 12
    step_drain_s: float = 3.0
    step_p99_ms: float = 250.0
    ingest_producers: int = 8
    ingest_window: int = 64
    ingest_s: float = 10.0
    idle_consumers: int = 5000
    idle_ws_sockets: int = 2000  # S4 /ws: idle /ws sockets, each following idle_ws_per_socket channels
    idle_ws_per_socket: int = 10  # of as many channels, which every socket follows
    mux_sockets: int = 200  # M1: /ws connections; the other mode has this times mux_per_socket
    mux_per_socket: int = 10  # channels each /ws connection follows
    mux_channels: int = 50
    mux_rate: float = 500.0  # messages per second, over all the channels
    mux_s: float = 8.0
    m2_sockets: int = 1000  # M2: M1's comparison with many channels, a few subscriptions each, slow ones
    m2_per_socket: int = 10
    m2_channels: int = 1000
    m2_channel_rate: float = 1.0  # messages per second per channel (M1's mux_rate is over all of them)
    m2_s: float = 10.0
    sse_streams: int = 500  # E1: connections in each mode (SSE streams, then /ws/consumer sockets)
    sse_channels: int = 5  # channels of each mode, the connections spread evenly over them
    sse_rate: float = 300.0  # messages per second, over all the channels of a mode
    sse_s: float = 8.0
    channels: int = 2000
    channel_rate: float = 1.0
    channels_s: float = 15.0
    backlog: int = 5000
    live_consumers: int = 50
    live_rate: float = 100.0
    storm_consumers: int = 1000
    storm_delay_s: float = 2.0
    storm_max_s: float = 120.0
    live_stall_limit_ms: float = 1000.0


FULL: Final = Params()
QUICK: Final = Params(
    fanout_consumers=40,
    fanout_rate=50.0,
    fanout_s=2.0,
    fanout_drain_s=3.0,
    step_s=2.0,
    step_max=3,
    step_drain_s=2.0,
    ingest_producers=2,
    ingest_window=16,
    ingest_s=2.0,
    idle_consumers=200,
    idle_ws_sockets=40,
    mux_sockets=20,
    mux_channels=10,
    mux_rate=100.0,
    mux_s=2.0,
    m2_sockets=50,
    m2_channels=50,
    m2_s=3.0,
    sse_streams=40,
    sse_channels=2,
    sse_rate=100.0,
    sse_s=2.0,
    channels=100,
    channels_s=3.0,
    backlog=500,
    live_consumers=5,
    live_rate=50.0,
    storm_consumers=20,
    storm_delay_s=1.0,
    storm_max_s=20.0,
)


def with_sizes(base: Params, sizes: dict[str, str]) -> Params:
    """``base`` with some of its sizes replaced by text values (``--param NAME=VALUE``)."""
    kinds = {f.name: f.type for f in fields(Params)}
    values: dict[str, Any] = {}
    for name, text in sizes.items():
        if name not in kinds:
            raise ValueError(f"expected one of {', '.join(kinds)}, got {name!r}")
        try:
            values[name] = int(text) if kinds[name] == "int" else float(text)
        except ValueError:
            raise ValueError(f"expected {kinds[name]} for {name}, got {text!r}") from None
    return replace(base, **values)


@dataclass
class Context:
    params: Params
    workers: int
    redis: RedisProbe
    run_id: str
    log: Log

    def channel(self, target: Target, name: str) -> str:
        return f"bench-{self.run_id}-{target.name}-{name}"

    async def load(self, target: Target, load: Load) -> Outcome:
        return await trial.run(load, target, self.workers, self.redis, self.log)

    async def start_trial(self, target: Target, load: Load, longer_s: float) -> trial.Trial:
        return await trial.Trial.start(load, target, self.workers, self.redis, self.log, longer_s)


class SetupFailed(Exception):
    """A scenario's preparation (e.g. resume-storm's backlog) did not succeed."""


Scenario = Callable[[Target, Context], Awaitable[ScenarioResult | list[ScenarioResult]]]


async def run(name: str, target: Target, ctx: Context) -> list[ScenarioResult]:
    """The scenario's rows: one, or one per mode it compares (M1, M2, E1)."""
    scenario: Scenario = _BY_NAME[name]
    ctx.log(f"{target.name} {name}: start")
    try:
        results = await scenario(target, ctx)
    except (WorkerFailed, SetupFailed, WebSocketException, OSError, TimeoutError) as exc:
        ctx.log(f"{target.name} {name}: failed: {exc}")
        return [ScenarioResult(Row(target.name, name, status=f"failed: {exc}"))]
    return results if isinstance(results, list) else [results]


# -- building blocks ---------------------------------------------------------------------------------


def _consumers(urls: list[str], channel: str, count: int, query: str = "") -> list[tuple[str, str]]:
    """``count`` consumers of ``channel``, round-robin over ``urls``."""
    return [(f"{urls[i % len(urls)]}/ws/consumer/{channel}{query}", channel) for i in range(count)]


def _producer(url: str, channel: str, **settings: Any) -> ProducerPlan:
    return ProducerPlan(url=f"{url}/ws/producer/{channel}", channel=channel, **settings)


def _per(total: float | None, count: int) -> float | None:
    return None if total is None or count <= 0 else total / count


def _loss(target: Target, outcome: Outcome, group: trial.Group) -> tuple[int, int]:
    """(loss, expected deliveries); with queue semantics each stored message is one delivery."""
    if target.queue_semantics:
        expected = outcome.messages
        return max(0, expected - group.counts["unique"]), expected
    return group.counts["loss"], group.counts["expected"]


def _fanout_row(target: Target, scenario: str, outcome: Outcome, group: trial.Group) -> Row:
    deliveries = group.counts["unique"]
    loss, expected = _loss(target, outcome, group)
    span_s = (group.last_rx_ms - outcome.go_ms) / 1000.0
    return Row(
        target=target.name,
        scenario=scenario,
        deliveries_per_s=deliveries / span_s if deliveries and span_s > 0 else None,
        p50_ms=group.latency.percentile(0.50),
        p99_ms=group.latency.percentile(0.99),
        max_ms=group.latency.max_ms if group.latency.count else None,
        loss=loss,
        loss_pct=100.0 * loss / expected if expected else None,
        cpu_us=_per(None if outcome.server_cpu_s is None else outcome.server_cpu_s * 1e6, deliveries),
        rss_kb_per_conn=_per(outcome.server_rss_kb, outcome.connections),
        redis_conns=outcome.redis_conns,
        loadgen_cpu_pct=outcome.loadgen_cpu_pct,
        notes=_integrity(target, group) + _production(outcome),
    )


def _integrity(target: Target, group: trial.Group) -> list[str]:
    counts = group.counts
    notes = [] if target.queue_semantics else [f"dup/ooo {counts['dups']}, gaps {counts['gaps']}"]
    if counts["failed"]:
        notes.append(f"{counts['failed']} consumers failed to connect ({group.failures[0]})")
    if counts["dropped"]:
        notes.append(f"{counts['dropped']} consumers dropped")
    if counts.get("disorder"):
        notes.append(f"{counts['disorder']} SSE ids out of order")
    if counts["errors"] or counts["foreign"]:
        notes.append(f"error frames {counts['errors']}, unparsed frames {counts['foreign']}")
    return notes


def _production(outcome: Outcome) -> list[str]:
    p = {key: int(value) for key, value in outcome.producers.items()}
    notes = []
    if p.get("skipped"):
        notes.append(f"{p['skipped']:,} of {p['due']:,} sends skipped (window full)")
    if p.get("errors"):
        notes.append(f"producer errors {p['errors']:,}")
    if p.get("unanswered"):
        notes.append(f"{p['unanswered']:,} sends unanswered")
    if p.get("failed"):
        notes.append(f"{p['failed']} producers failed to connect")
    return notes


def _achieved_rate(outcome: Outcome) -> float | None:
    """Messages per second the fixed-rate producers actually sent."""
    elapsed = outcome.producers.get("elapsed_s", 0.0)
    return outcome.producers.get("sent", 0) / elapsed if elapsed > 0 else None


def _details(outcome: Outcome, **extra: Any) -> dict[str, Any]:
    groups = {
        name: {
            **g.counts,
            "latency_ms": _percentiles(g.latency),
            "connect_ms": _percentiles(g.connect),
            "connect_wall_s": (g.connected_ms - g.started_ms) / 1000.0,
            "failures": g.failures,
        }
        for name, g in outcome.groups.items()
    }
    return {
        "groups": groups,
        "producers": {**outcome.producers, "ack_latency_ms": _percentiles(outcome.ack_latency)},
        "messages_stored": outcome.messages,
        "server_cpu_s": outcome.server_cpu_s,
        "server_rss_growth_kb": outcome.server_rss_kb,
        "redis_conns_added": outcome.redis_conns,
        "redis_cpu_s": outcome.redis_cpu_s,
        "loadgen_cpu_pct_since_go": outcome.loadgen_cpu_pct,
        "loadgen_cpu_pct_whole_life": outcome.loadgen_cpu_pct_life,
        "loadgen_cpu_us_per_message": _loadgen_cost(outcome),
        **extra,
    }


def _loadgen_cost(outcome: Outcome) -> float | None:
    """Client CPU (every worker, since GO) per message received or acknowledged."""
    handled = sum(g.counts["received"] for g in outcome.groups.values()) + outcome.producers.get("acked", 0)
    cpu_s = sum(w["process"]["cpu_s_since_go"] for w in outcome.workers)
    return cpu_s * 1e6 / handled if handled else None


def _percentiles(summary: Any) -> dict[str, float | None]:
    return {
        "count": summary.count,
        "p50": summary.percentile(0.5),
        "p90": summary.percentile(0.9),
        "p99": summary.percentile(0.99),
        "p999": summary.percentile(0.999),
        "max": summary.max_ms if summary.count else None,
    }


# -- S1, S2: fan-out ---------------------------------------------------------------------------------


def _fanout_load(target: Target, ctx: Context, label: str, channel: str, rate: float, seconds: float) -> Load:
    p = ctx.params
    return Load(
        label=label,
        groups=[GroupPlan("consumers", _consumers(target.urls, channel, p.fanout_consumers))],
        producers=[_producer(target.urls[0], channel, rate=rate, duration_s=seconds)],
        max_s=seconds + 5.0,
    )


async def fanout(target: Target, ctx: Context) -> ScenarioResult:
    p = ctx.params
    load = _fanout_load(
        target, ctx, f"{target.name} S1", ctx.channel(target, "s1"), p.fanout_rate, p.fanout_s
    )
    load.drain_s = p.fanout_drain_s
    outcome = await ctx.load(target, load)
    row = _fanout_row(target, "S1", outcome, outcome.groups["consumers"])
    if target.queue_semantics:
        row.notes.append("queue semantics: deliveries = messages")
    return ScenarioResult(row, _details(outcome), outcome.workers)


async def max_fanout(target: Target, ctx: Context) -> ScenarioResult:
    p = ctx.params
    steps: list[dict[str, Any]] = []
    best: tuple[float, Row, Outcome] | None = None
    rate = p.step_first_rate
    for index in range(p.step_max):
        label = f"{target.name} S2 P={rate:,.0f}"
        load = _fanout_load(target, ctx, label, ctx.channel(target, f"s2-{index}"), rate, p.step_s)
        load.drain_s = p.step_drain_s
        outcome = await ctx.load(target, load)
        row = _fanout_row(target, "S2", outcome, outcome.groups["consumers"])
        row.rss_kb_per_conn = None  # earlier steps already grew the servers: not a per-connection figure
        failure = _step_failure(row, outcome, rate, p)
        steps.append({"rate": rate, "failure": failure, "row": asdict(row), "details": _details(outcome)})
        ctx.log(f"{label}: {'fails: ' + failure if failure else 'passes'}")
        if failure:
            break
        best = (rate, row, outcome)
        rate *= 2
    if best is None:
        return ScenarioResult(Row(target.name, "S2", status="failed: no step passed"), {"steps": steps})
    best_rate, row, outcome = best
    row.notes.insert(0, f"highest passing step {best_rate:,.0f} msg/s")
    if steps[-1]["failure"]:
        row.notes.insert(1, f"next step fails: {steps[-1]['failure']}")
    return ScenarioResult(row, {"highest_passing_rate": best_rate, "steps": steps}, outcome.workers)


def _step_failure(row: Row, outcome: Outcome, rate: float, p: Params) -> str | None:
    achieved = _achieved_rate(outcome)
    if row.p99_ms is None or row.p99_ms > p.step_p99_ms:
        return f"p99 {row.p99_ms} ms > {p.step_p99_ms:.0f} ms"
    if row.loss:
        return f"loss {row.loss:,}"
    if achieved is None or achieved < 0.95 * rate or outcome.producers.get("skipped"):
        return f"producer sent {achieved or 0:,.0f} msg/s of {rate:,.0f}"
    return None


# -- S3: ingest --------------------------------------------------------------------------------------


async def ingest(target: Target, ctx: Context) -> ScenarioResult:
    p = ctx.params
    producers = [
        _producer(
            target.urls[i % len(target.urls)],
            ctx.channel(target, f"s3-{i}"),
            window=p.ingest_window,
            duration_s=p.ingest_s,
        )
        for i in range(p.ingest_producers)
    ]
    load = Load(label=f"{target.name} S3", producers=producers, max_s=p.ingest_s + 5.0, drain_s=0.0)
    outcome = await ctx.load(target, load)
    acked = int(outcome.producers.get("acked", 0))
    row = Row(
        target=target.name,
        scenario="S3",
        deliveries_per_s=acked / p.ingest_s if acked else None,
        p50_ms=outcome.ack_latency.percentile(0.50),
        p99_ms=outcome.ack_latency.percentile(0.99),
        max_ms=outcome.ack_latency.max_ms if outcome.ack_latency.count else None,
        cpu_us=_per(None if outcome.server_cpu_s is None else outcome.server_cpu_s * 1e6, acked),
        redis_conns=outcome.redis_conns,
        loadgen_cpu_pct=outcome.loadgen_cpu_pct,
        notes=["acked msg/s; ack latency", f"errors {int(outcome.producers.get('errors', 0)):,}"]
        + [note for note in _production(outcome) if not note.startswith("producer errors")],
    )
    return ScenarioResult(row, _details(outcome), outcome.workers)


# -- S4: idle ----------------------------------------------------------------------------------------


S4_WS: Final = "S4 /ws"


async def idle(target: Target, ctx: Context) -> list[ScenarioResult]:
    """S4: idle ``/ws/consumer`` sockets on the first instance; with ``/ws`` (the relay), idle ``/ws``
    sockets following ``idle_ws_per_socket`` channels each beside them, held at once, so that
    neither set's RSS growth is memory the other freed."""
    count = ctx.params.idle_consumers
    group = GroupPlan("idle", _consumers(target.urls[:1], ctx.channel(target, "s4"), count), concurrency=256)
    single = Load(label=f"{target.name} S4", groups=[group], max_s=5.0, drain_s=0.0)
    if not target.relay_frames:
        return [_idle_result(target, "S4", await ctx.load(target, single), count, 1)]
    sockets, per_socket = ctx.params.idle_ws_sockets, ctx.params.idle_ws_per_socket
    channels = [ctx.channel(target, f"s4-ws-{i}") for i in range(per_socket)]
    url = target.urls[0]
    subscriptions = [(f"{url}/ws", channel) for _ in range(sockets) for channel in channels]
    plan = GroupPlan("idle", subscriptions, concurrency=256, multiplex=per_socket)
    mux = Load(label=f"{target.name} {S4_WS}", groups=[plan], max_s=5.0, drain_s=0.0)
    single_outcome, mux_outcome = await _in_turn(ctx, target, [single, mux])
    return [
        _idle_result(target, "S4", single_outcome, count, 1),
        _idle_result(target, S4_WS, mux_outcome, sockets * per_socket, per_socket),
    ]


def _idle_result(
    target: Target, scenario: str, outcome: Outcome, count: int, per_socket: int
) -> ScenarioResult:
    """An S4 row: RSS growth per idle client connection (a ``/ws`` socket with all its subscriptions)."""
    merged = outcome.groups["idle"]
    connected = merged.counts["connected"]  # subscriptions; a /ws socket's are up together or not at all
    sockets = connected // per_socket
    seconds = (merged.connected_ms - merged.started_ms) / 1000.0
    what = (
        f"{sockets:,} sockets, {connected:,} subscriptions" if per_socket > 1 else f"{connected:,}/{count:,}"
    )
    notes = [
        f"{what} connected in {seconds:.1f}s",
        f"handshake p50/p99 {merged.connect.percentile(0.5) or 0:.1f}/{merged.connect.percentile(0.99) or 0:.1f} ms",
    ]
    if connected < count:
        notes.insert(0, f"only {connected:,} of {count:,} subscriptions up")
    row = Row(
        target=target.name,
        scenario=scenario,
        rss_kb_per_conn=_per(outcome.server_rss_kb, sockets),
        redis_conns=outcome.redis_conns,
        loadgen_cpu_pct=outcome.loadgen_cpu_pct_life,
        notes=notes + _integrity(target, merged)[1:],
    )
    if per_socket > 1:
        row.rss_kb_per_socket = row.rss_kb_per_conn
        row.versus = "S4"
    return ScenarioResult(row, _details(outcome, connect_wall_s=seconds), outcome.workers)


# -- M1, M2: one /ws socket, many channels ------------------------------------------------------------


@dataclass(frozen=True)
class _Mux:
    """A multiplexed comparison's shape: ``sockets`` ``/ws`` sockets following ``per_socket`` channels
    each, over ``channels`` (each followed ``sockets * per_socket / channels`` times), and the same
    subscriptions as a ``/ws/consumer/{C}`` socket each; ``rate`` messages per second over all channels."""

    name: str  # "M1", "M2": the rows' scenario and the channels' names start with it
    sockets: int
    per_socket: int
    channels: int
    rate: float
    seconds: float

    @property
    def mux(self) -> str:
        return f"{self.name} /ws"

    @property
    def single(self) -> str:
        return f"{self.name} /ws/consumer"


def _m1(p: Params) -> _Mux:
    return _Mux("M1", p.mux_sockets, p.mux_per_socket, p.mux_channels, p.mux_rate, p.mux_s)


def _m2(p: Params) -> _Mux:
    rate = p.m2_channel_rate * p.m2_channels
    return _Mux("M2", p.m2_sockets, p.m2_per_socket, p.m2_channels, rate, p.m2_s)


async def multiplexed(target: Target, ctx: Context) -> list[ScenarioResult]:
    """M1: ``mux_sockets`` ``/ws`` sockets, ``mux_per_socket`` channels each, against a socket each."""
    return await _two_ways(target, ctx, _m1(ctx.params))


async def multiplexed_wide(target: Target, ctx: Context) -> list[ScenarioResult]:
    """M2: M1 over 1,000 channels, 10 subscriptions each, at 1 msg/s each.

    At full size the two sets and their producers are 13,000 client connections at once (10,000
    ``/ws/consumer`` and 1,000 ``/ws`` sockets, 2,000 producers). A set's RSS is read before its GO,
    so its RSS per socket is that of an idle ``/ws`` connection holding ``m2_per_socket``
    subscriptions, beside an idle ``/ws/consumer`` socket's.
    """
    return await _two_ways(target, ctx, _m2(ctx.params))


async def _two_ways(target: Target, ctx: Context, shape: _Mux) -> list[ScenarioResult]:
    """The same subscriptions as ``shape.sockets`` ``/ws`` sockets and as a socket each, loaded alike.

    Both sets are held connected at once, each on channels of its own: the second one's RSS growth
    is then its own, not memory the first one freed being used again. Then each set in turn is
    published to and closed, server CPU counted from its GO to the end of its drain: the first
    with the other set idle, the second 2 s after the first one's connections were closed.
    """
    if not target.relay_frames:
        return [ScenarioResult(Row(target.name, shape.name, status="n/a: no /ws"))]
    if not 1 <= shape.per_socket <= shape.channels:
        raise SetupFailed(
            f"{shape.name}: expected 1 <= channels per socket <= channels ({shape.channels}),"
            f" got {shape.per_socket}"
        )
    # a socket each first: memory earlier scenarios freed is used again by the first set, so its
    # growth is the one that may be under-counted (never the /ws one's ratio flattered)
    loads = [_mux_load(target, ctx, shape, mux=False), _mux_load(target, ctx, shape, mux=True)]
    single, mux = await _in_turn(ctx, target, loads)
    return [
        _subscriptions_result(target, shape.mux, mux, shape.per_socket, versus=shape.single),
        _subscriptions_result(target, shape.single, single, 1, versus=None),
    ]


def _sockets(load: Load) -> int:
    """The client connections of ``load``: its consumers' sockets (or streams) and its producers."""
    return sum(len(g.consumers) // (g.multiplex or 1) for g in load.groups) + len(load.producers)


def _check_file_limit(loads: list[Load], workers: int, spare: int = 64) -> None:
    """Fail now, not with thousands of failed connections, when a load generator would run out of
    file descriptors (each load has ``workers`` processes of its own; they inherit this limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    busiest = max(-(-_sockets(load) // workers) for load in loads)  # connections are dealt out evenly
    if busiest + spare > soft:
        raise SetupFailed(
            f"a load generator would hold {busiest:,} connections, over its file limit of {soft:,}"
            " (ulimit -n): raise it, or use more --workers"
        )


async def _in_turn(ctx: Context, target: Target, loads: list[Load]) -> list[Outcome]:
    """Every load's set connected, one after the other, and held; then each in turn loaded and closed."""
    _check_file_limit(loads, ctx.workers)
    longer_s = sum(trial.bound_s(load) for load in loads)
    trials: list[trial.Trial] = []
    outcomes: list[Outcome] = []
    try:
        for load in loads:
            trials.append(await ctx.start_trial(target, load, longer_s))
            await trials[-1].connect()
        for each in trials:
            await asyncio.sleep(2.0)  # the servers done with the previous phase (closes included)
            await each.measure()
            outcomes.append(await each.finish())  # loadgen CPU% is then over this set's load alone
            outcomes[-1].redis_conns = each.redis_added  # the peak after production counts every set
            await each.close()
    finally:
        for each in trials:
            await each.close()
    return outcomes


def _mux_load(target: Target, ctx: Context, shape: _Mux, mux: bool) -> Load:
    """``shape.sockets`` times ``shape.per_socket`` subscriptions over ``shape.channels``, evenly, a producer each."""
    urls = target.urls
    prefix = f"{shape.name.lower()}-{'mux' if mux else 'single'}"
    channels = [ctx.channel(target, f"{prefix}-{i}") for i in range(shape.channels)]
    period = len(channels) // math.gcd(len(channels), shape.per_socket)  # socket i + period: i's channels
    subscriptions = []
    for socket in range(shape.sockets):  # a socket's channels are consecutive, so all different
        # the same instance in both modes (the same load per instance); the sockets of the same channels
        # dealt out over the instances, as a balancer would (M1, period 5: socket i on i mod 2 as before)
        url = urls[(socket % period + socket // period) % len(urls)]
        for index in range(shape.per_socket):
            channel = channels[(socket * shape.per_socket + index) % len(channels)]
            subscriptions.append((f"{url}/ws" if mux else f"{url}/ws/consumer/{channel}", channel))
    rate = shape.rate / len(channels)
    producers = [
        _producer(
            urls[i % len(urls)], ch, rate=rate, duration_s=shape.seconds, phase_s=(i / len(channels)) / rate
        )
        for i, ch in enumerate(channels)
    ]
    return Load(
        label=f"{target.name} {shape.mux if mux else shape.single}",
        groups=[GroupPlan("consumers", subscriptions, multiplex=shape.per_socket if mux else 0)],
        producers=producers,
        max_s=shape.seconds + 1.0 / rate + 5.0,
        drain_s=ctx.params.fanout_drain_s,
        producers_first=True,  # RSS growth is then the subscriptions' alone
    )


def _subscriptions_result(
    target: Target, scenario: str, outcome: Outcome, per_socket: int, versus: str | None
) -> ScenarioResult:
    """A comparison's row: RSS growth per subscription (``rss_kb_per_conn``) and per client connection."""
    group = outcome.groups["consumers"]
    subscriptions = group.counts["connected"]
    # as planned; connected: a /ws socket's subscriptions are up together or not at all
    sockets = group.counts["consumers"] // per_socket
    row = _fanout_row(target, scenario, outcome, group)
    row.rss_kb_per_conn = _per(outcome.server_rss_kb, subscriptions)
    row.rss_kb_per_socket = _per(outcome.server_rss_kb, subscriptions // per_socket)
    row.versus = versus
    row.notes.insert(
        0, f"{sockets:,} sockets, {subscriptions:,} subscriptions, {outcome.messages:,} messages"
    )
    details = _details(outcome, sockets=sockets, subscriptions=subscriptions)
    return ScenarioResult(row, details, outcome.workers)


# -- E1: Server-Sent Events against WebSocket consumers ------------------------------------------------

E1_SSE: Final = "E1 SSE"
E1_WS: Final = "E1 WebSocket"


async def event_streams(target: Target, ctx: Context) -> list[ScenarioResult]:
    """``sse_streams`` ``GET /channels/C/events`` streams against as many ``/ws/consumer/C`` sockets.

    As M1: both sets held connected at once, each on channels of its own with a producer per
    channel, then each in turn published to (the same rate) and closed. The WebSocket set connects
    first: memory earlier scenarios freed goes to it, which can only raise SSE ÷ WebSocket.
    """
    if not target.relay_frames:
        return [ScenarioResult(Row(target.name, "E1", status="n/a: no /channels/C/events"))]
    p = ctx.params
    if not 1 <= p.sse_channels <= p.sse_streams:
        raise SetupFailed(f"expected 1 <= sse_channels <= sse_streams, got {p.sse_channels}")
    loads = [_e1_load(target, ctx, sse=False), _e1_load(target, ctx, sse=True)]
    websocket, sse = await _in_turn(ctx, target, loads)
    return [
        _subscriptions_result(target, E1_SSE, sse, 1, versus=E1_WS),
        _subscriptions_result(target, E1_WS, websocket, 1, versus=None),
    ]


def _e1_load(target: Target, ctx: Context, sse: bool) -> Load:
    """``sse_streams`` consumers over ``sse_channels`` (round-robin over the instances), a producer each."""
    p = ctx.params
    urls = target.urls
    channels = [ctx.channel(target, f"e1-{'sse' if sse else 'ws'}-{i}") for i in range(p.sse_channels)]
    consumers = []
    for i in range(p.sse_streams):
        url, channel = urls[i % len(urls)], channels[i % len(channels)]
        if sse:
            consumers.append((f"{url.replace('ws://', 'http://', 1)}/channels/{channel}/events", channel))
        else:
            consumers.append((f"{url}/ws/consumer/{channel}", channel))
    rate = p.sse_rate / len(channels)
    producers = [
        _producer(urls[i % len(urls)], ch, rate=rate, duration_s=p.sse_s, phase_s=(i / len(channels)) / rate)
        for i, ch in enumerate(channels)
    ]
    return Load(
        label=f"{target.name} {E1_SSE if sse else E1_WS}",
        groups=[GroupPlan("consumers", consumers)],
        producers=producers,
        max_s=p.sse_s + 1.0 / rate + 5.0,
        drain_s=p.fanout_drain_s,
        producers_first=True,  # RSS growth is then the consumers' alone
    )


# -- many channels -----------------------------------------------------------------------------------


async def many_channels(target: Target, ctx: Context) -> ScenarioResult:
    p = ctx.params
    urls = target.urls
    channels = [ctx.channel(target, f"mc-{i}") for i in range(p.channels)]
    consumers = [(f"{urls[i % len(urls)]}/ws/consumer/{ch}", ch) for i, ch in enumerate(channels)]
    producers = [
        # the producer of a channel sits on another instance than its consumer, when there is one
        _producer(
            urls[(i + 1) % len(urls)],
            ch,
            rate=p.channel_rate,
            duration_s=p.channels_s,
            phase_s=(i / len(channels)) / p.channel_rate,
        )
        for i, ch in enumerate(channels)
    ]
    load = Load(
        label=f"{target.name} many-channels",
        groups=[GroupPlan("consumers", consumers)],
        producers=producers,
        max_s=p.channels_s + 1.0 / p.channel_rate + 5.0,
        drain_s=p.fanout_drain_s,
    )
    outcome = await ctx.load(target, load)
    row = _fanout_row(target, "many-channels", outcome, outcome.groups["consumers"])
    per_instance = _per(None if outcome.redis_conns is None else float(outcome.redis_conns), len(urls))
    if per_instance is not None:
        row.notes.insert(0, f"Redis conns/instance {per_instance:.1f}")
    return ScenarioResult(row, _details(outcome, redis_conns_per_instance=per_instance), outcome.workers)


# -- resume storm ------------------------------------------------------------------------------------


class _AllCaughtUp:
    """True once every storm consumer is live again, and ``linger_s`` later (live traffic keeps flowing)."""

    def __init__(self, count: int, linger_s: float = 1.0) -> None:
        self.count = count
        self.linger_s = linger_s
        self.since: float | None = None

    def __call__(self, totals: dict[str, Any]) -> bool:
        if totals.get("caught_up", {}).get("storm", 0) < self.count:
            return False
        if self.since is None:
            self.since = time.monotonic()
        return time.monotonic() - self.since >= self.linger_s


async def resume_storm(target: Target, ctx: Context) -> ScenarioResult:
    if not target.resume:
        return ScenarioResult(Row(target.name, "resume-storm", status="n/a: no resume (?from=)"))
    p = ctx.params
    channel = ctx.channel(target, "storm")
    ids = await _publish_backlog(f"{target.urls[0]}/ws/producer/{channel}", p.backlog + 1)
    ctx.log(f"{target.name} resume-storm: {p.backlog + 1:,} messages published; storm resumes after {ids[0]}")
    live = GroupPlan("live", _consumers(target.urls, channel, p.live_consumers), first_seq=p.backlog + 1)
    storm = GroupPlan(
        "storm",
        _consumers(target.urls, channel, p.storm_consumers, f"?from={ids[0]}"),
        first_seq=1,
        connect_after_s=p.storm_delay_s,
        concurrency=p.storm_consumers,  # all at once
    )
    producer = _producer(
        target.urls[0],
        channel,
        rate=p.live_rate,
        duration_s=p.storm_delay_s + p.storm_max_s,
        first_seq=p.backlog + 1,
    )
    load = Load(
        label=f"{target.name} resume-storm",
        groups=[live, storm],
        producers=[producer],
        max_s=p.storm_delay_s + p.storm_max_s,
        drain_s=p.fanout_drain_s,
        stop_when=_AllCaughtUp(p.storm_consumers),
        separate=("live",),  # the storm's 5 million messages must not keep their client busy
    )
    outcome = await ctx.load(target, load)
    return _storm_result(target, p, outcome)


def _storm_result(target: Target, p: Params, outcome: Outcome) -> ScenarioResult:
    live, storm = outcome.groups["live"], outcome.groups["storm"]
    catch_up_s = (storm.caught_up_last_ms - storm.started_ms) / 1000.0 if storm.counts["caught_up"] else None
    deliveries = storm.counts["unique"] + live.counts["unique"]
    loss = storm.counts["loss"] + live.counts["loss"]
    expected = storm.counts["expected"] + live.counts["expected"]
    stall = live.latency.max_ms if live.latency.count else None
    notes = [
        f"caught up {storm.counts['caught_up']:,}/{p.storm_consumers:,}"
        + (f" in {catch_up_s:.2f}s" if catch_up_s is not None else ""),
        f"live stall max {stall:.0f} ms" if stall is not None else "live stall max n/a",
        f"gaps {storm.counts['gaps'] + live.counts['gaps']}, dup/ooo {storm.counts['dups'] + live.counts['dups']}",
        f"storm deliveries {storm.counts['unique']:,}",
    ]
    if stall is not None and stall >= p.live_stall_limit_ms:
        notes.insert(2, f"LIVE STALL over {p.live_stall_limit_ms:.0f} ms")
    row = Row(
        target=target.name,
        scenario="resume-storm",
        deliveries_per_s=storm.counts["unique"] / catch_up_s if catch_up_s else None,
        p50_ms=live.latency.percentile(0.50),
        p99_ms=live.latency.percentile(0.99),
        max_ms=stall,
        loss=loss,
        loss_pct=100.0 * loss / expected if expected else None,
        cpu_us=_per(None if outcome.server_cpu_s is None else outcome.server_cpu_s * 1e6, deliveries),
        redis_conns=outcome.redis_conns,
        loadgen_cpu_pct=outcome.loadgen_cpu_pct,
        notes=notes + _integrity(target, storm)[1:] + _production(outcome),
    )
    details = _details(outcome, catch_up_s=catch_up_s, live_stall_max_ms=stall)
    return ScenarioResult(row, details, outcome.workers)


async def _publish_backlog(url: str, count: int, window: int = 200) -> list[str]:
    """Publish seq 0..count-1 (pipelined) and return the acknowledged ids, in order."""
    ids: list[str] = []
    pad = b"x" * 54
    async with connect(url, compression=None, open_timeout=10, max_size=None) as ws:
        sent = 0
        async with asyncio.timeout(30.0 + count / 500.0):
            while len(ids) < count:
                while sent < count and sent - len(ids) < window:
                    await ws.send((PAYLOAD % (sent, time.time() * 1000.0, pad)).decode())
                    sent += 1
                reply = orjson.loads(await ws.recv())
                if reply.get("type") != "ack":
                    raise SetupFailed(f"backlog publish refused: {reply}")
                ids.append(reply["id"])
    return ids


_BY_NAME: Final[dict[str, Scenario]] = {
    "S1": fanout,
    "S2": max_fanout,
    "S3": ingest,
    "S4": idle,
    "M1": multiplexed,
    "M2": multiplexed_wide,
    "E1": event_streams,
    "many-channels": many_channels,
    "resume-storm": resume_storm,
}
