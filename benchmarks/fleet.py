"""The parent's side of the load generators: start the worker processes, drive them, collect results.

Each worker is ``python -m benchmarks.loadgen`` in a session of its own (Ctrl-C reaches only the
parent, which then ends them by PID). Events come back as JSON lines (``benchmarks.plan``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

from benchmarks import plan as wire
from benchmarks.plan import WorkerPlan

ROOT = Path(__file__).resolve().parent.parent  # the directory holding the ``benchmarks`` package


def child_env() -> dict[str, str]:
    """The environment of every process the harness starts: ``benchmarks`` importable, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerFailed(Exception):
    """A worker exited, broke the line protocol, or did not answer in time."""


class WorkerProcess:
    def __init__(self, plan: WorkerPlan, process: asyncio.subprocess.Process) -> None:
        self.plan = plan
        self.process = process
        loop = asyncio.get_running_loop()
        self.producers: asyncio.Future[dict[str, Any]] = loop.create_future()  # producers_first only
        self.ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.produced: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.result: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.progress: dict[str, Any] = {}
        self._reader = asyncio.create_task(self._read_events())

    async def _read_events(self) -> None:
        assert self.process.stdout is not None
        for _ in range(10**9):  # ends at EOF
            line = await self.process.stdout.readline()
            if not line:
                break
            try:
                event: dict[str, Any] = orjson.loads(line)
            except orjson.JSONDecodeError:
                print(f"loadgen {self.plan.index}: {line.decode(errors='replace').rstrip()}", file=sys.stderr)
                continue
            self._dispatch(event)
        gone = WorkerFailed(f"loadgen worker {self.plan.index} exited ({self.process.returncode})")
        for future in (self.producers, self.ready, self.produced, self.result):
            if not future.done():
                future.set_exception(gone)
                future.exception()  # marks it retrieved: not every phase is always awaited

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.pop("event", None)
        if kind == "progress":
            self.progress = event
        elif kind == "producers" and not self.producers.done():
            self.progress = event
            self.producers.set_result(event)
        elif kind == "ready" and not self.ready.done():
            self.progress = event
            self.ready.set_result(event)
        elif kind == "produced" and not self.produced.done():
            self.produced.set_result(event)
        elif kind == "result" and not self.result.done():
            self.result.set_result(event)

    def send(self, line: bytes) -> None:
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(line + b"\n")

    async def close(self, within: float) -> None:
        """Wait for the worker to exit by itself; past ``within``, SIGKILL it (by PID)."""
        try:
            await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            await asyncio.wait_for(self.process.wait(), 10)
        self._reader.cancel()


class Fleet:
    """The workers of one scenario run, addressed together."""

    def __init__(self, workers: list[WorkerProcess]) -> None:
        self.workers = workers

    @classmethod
    async def start(cls, plans: list[WorkerPlan]) -> Fleet:
        workers: list[WorkerProcess] = []
        fleet = cls(workers)
        try:
            for plan in plans:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "benchmarks.loadgen",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env=child_env(),
                    start_new_session=True,
                    limit=256 * 1024 * 1024,  # result lines carry histograms
                )
                worker = WorkerProcess(plan, process)
                workers.append(worker)
                worker.send(plan.to_json())
        except BaseException:
            await fleet.close()
            raise
        return fleet

    def command(self, name: str, payload: Any = None) -> None:
        line = name.encode() if payload is None else name.encode() + b" " + orjson.dumps(payload)
        for worker in self.workers:
            worker.send(line)

    async def producers_up(self, within: float) -> list[dict[str, Any]]:
        """(``producers_first``) every worker's producers are connected; ``CONNECT`` goes on."""
        return await self._all("producers", within)

    async def ready(self, within: float) -> list[dict[str, Any]]:
        return await self._all("ready", within)

    async def produced(self, within: float) -> dict[str, dict[str, Any]]:
        """Every channel's ``{"first", "last", "errored"}``, over all workers."""
        channels: dict[str, dict[str, Any]] = {}
        for event in await self._all("produced", within):
            channels.update(event["channels"])
        return channels

    def all_produced(self) -> bool:
        return all(w.produced.done() for w in self.workers)

    async def finish(self, within: float) -> list[dict[str, Any]]:
        self.command(wire.FINISH)
        return await self._all("result", within)

    def totals(self) -> dict[str, Any]:
        """The latest progress of every worker, summed (``caught_up`` per group)."""
        total: dict[str, Any] = {"caught_up": {}}
        for worker in self.workers:
            for key, value in worker.progress.items():
                if key == "caught_up":
                    for group, count in value.items():
                        total["caught_up"][group] = total["caught_up"].get(group, 0) + count
                elif isinstance(value, int) and key != "worker":
                    total[key] = total.get(key, 0) + value
                elif key == "incomplete" and value is None:
                    total["incomplete_unknown"] = True
        return total

    async def _all(self, phase: str, within: float) -> list[dict[str, Any]]:
        futures = [getattr(w, phase) for w in self.workers]
        try:
            async with asyncio.timeout(within):
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            raise WorkerFailed(f"loadgen workers did not report {phase!r} within {within:.0f}s") from None

    async def close(self) -> None:
        for worker in self.workers:
            if worker.process.stdin is not None:
                worker.process.stdin.close()  # a worker whose stdin closes exits at once
        await asyncio.gather(*(w.close(within=5) for w in self.workers))
