"""One invocation: each target in turn (its local servers started before its scenarios and stopped
after them, whatever happens), then the run's own keys removed from Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import report, scenarios, servers
from benchmarks.measure import RedisProbe
from benchmarks.report import Row, ScenarioResult
from benchmarks.scenarios import FULL, QUICK, Context, with_sizes
from benchmarks.servers import ServerStartFailed, Target

RELAY, XREAD, QUEUE = "relay", "xread-baseline", "queue-baseline"


@dataclass
class Options:
    scenarios: list[str]
    urls: list[str] = field(default_factory=list)  # an existing deployment; empty: spawn
    redis_url: str = "redis://127.0.0.1:6379/0"
    server_pids: list[int] = field(default_factory=list)
    spawn: int = 2
    baselines: bool = True
    workers: int = 2
    quick: bool = False
    relay_env: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, str] = field(default_factory=dict)  # Params fields replaced (--param NAME=VALUE)


_STARTED = time.monotonic()


def log(line: str) -> None:
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {line}", file=sys.stderr, flush=True)


TargetFactory = Callable[[], contextlib.AbstractAsyncContextManager[Target]]


async def run(options: Options) -> dict[str, Any]:
    run_id = secrets.token_hex(4)
    workdir = Path(tempfile.mkdtemp(prefix=f"benchmarks-{run_id}-"))
    probe = RedisProbe(options.redis_url)
    params = with_sizes(QUICK if options.quick else FULL, options.sizes)
    ctx = Context(params, options.workers, probe, run_id, log)
    log(f"run {run_id}: scenarios {' '.join(options.scenarios)}; server logs in {workdir} (kept on failure)")
    results: list[ScenarioResult] = []
    targets: list[Target] = []
    try:
        for name, factory in _targets(options, run_id, workdir):
            try:
                async with factory() as target:
                    targets.append(target)
                    log(f"{target.name}: {', '.join(target.urls)} (pids {target.pids or 'unknown'})")
                    results += await _scenarios(target, ctx, options)
            except ServerStartFailed as exc:
                log(f"{name}: could not start: {exc}")
                results += [ScenarioResult(Row(name, s, status=f"failed: {exc}")) for s in options.scenarios]
    finally:
        deleted = probe.delete_matching(f"*bench-{run_id}*")
        probe.close()
        log(f"removed {deleted:,} keys of this run from Redis")
    if any(r.row.status.startswith("failed") for r in results):
        log(f"server logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return _document(options, ctx, run_id, workdir, targets, results)


async def _scenarios(target: Target, ctx: Context, options: Options) -> list[ScenarioResult]:
    results = []
    for name in options.scenarios:
        results.extend(await scenarios.run(name, target, ctx))
        await asyncio.sleep(0.2 if options.quick else 2.0)  # let the servers settle between scenarios
    return results


def _targets(options: Options, run_id: str, workdir: Path) -> list[tuple[str, TargetFactory]]:
    made: list[tuple[str, TargetFactory]] = [(RELAY, lambda: _relay(options, run_id, workdir))]
    if options.baselines:
        made.append((XREAD, lambda: _baseline(XREAD, "xread_app", 2, options, run_id, workdir)))
        made.append((QUEUE, lambda: _baseline(QUEUE, "queue_app", 1, options, run_id, workdir)))
    return made


@contextlib.asynccontextmanager
async def _relay(options: Options, run_id: str, workdir: Path) -> AsyncIterator[Target]:
    if options.urls:
        await servers.wait_ready(options.urls, within=15.0)
        yield Target(RELAY, options.urls, options.server_pids, relay_frames=True, resume=True, note="--url")
        return
    prefix = f"bench-{run_id}"
    started = servers.relay_instances(options.spawn, options.redis_url, prefix, workdir, options.relay_env)
    try:
        await servers.wait_ready([s.ws for s in started], within=30.0, servers=started)
        note = f"{len(started)} local instances, key prefix {prefix}"
        yield Target(RELAY, [s.ws for s in started], [s.pid for s in started], True, resume=True, note=note)
    finally:
        servers.stop_all(started)


@contextlib.asynccontextmanager
async def _baseline(
    name: str, module: str, count: int, options: Options, run_id: str, workdir: Path
) -> AsyncIterator[Target]:
    prefix = f"bench-{run_id}-xread"
    started = servers.baseline_instances(module, count, options.redis_url, prefix, workdir)
    try:
        await servers.wait_ready([s.ws for s in started], within=30.0, servers=started)
        queue = module == "queue_app"
        note = "queue semantics, one instance" if queue else f"{count} instances, key prefix {prefix}"
        yield Target(
            name, [s.ws for s in started], [s.pid for s in started], queue_semantics=queue, note=note
        )
    finally:
        servers.stop_all(started)


def _document(
    options: Options,
    ctx: Context,
    run_id: str,
    workdir: Path,
    targets: list[Target],
    results: list[ScenarioResult],
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "config": {**asdict(options), "params": asdict(ctx.params)},
        "workdir": str(workdir),
        "targets": [asdict(t) for t in targets],
        "results": [{"target": r.row.target, "scenario": r.row.scenario, **r.to_dict()} for r in results],
        "ratios": report.ratios([r.row for r in results]),
        "versus_ratios": report.versus_ratios([r.row for r in results]),
        "table": report.render(results),
    }
