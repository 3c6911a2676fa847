"""Targets, and the local server processes behind them: relay instances and the two baselines.

Every process started here runs in a session of its own, on a free port of 127.0.0.1, logs to a
file in the run's work directory, and is stopped by PID: SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx

from benchmarks.fleet import child_env


@dataclass
class Target:
    """What the scenarios load: instances (``ws://host:port``) speaking one protocol."""

    name: str
    urls: list[str]
    pids: list[int] = field(default_factory=list)  # server processes, for CPU and RSS
    relay_frames: bool = False  # relay protocol (subscribed/message/gap, ack/error)
    queue_semantics: bool = False  # each message reaches ONE consumer
    resume: bool = False  # consumers can start after an id (?from=)
    note: str = ""


class ServerProcess:
    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path, port: int) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                cwd=log_path.parent,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self, within: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(within)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.process.wait(10)


def stop_all(servers: Sequence[ServerProcess], within: float = 10.0) -> None:
    """SIGTERM every one first, then wait for each (SIGKILL past ``within``)."""
    for server in servers:
        if server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGTERM)
    for server in servers:
        server.stop(within)


class ServerStartFailed(Exception):
    """A local server exited or did not become ready in time."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def relay_instances(
    count: int, redis_url: str, prefix: str, workdir: Path, overrides: dict[str, str]
) -> list[ServerProcess]:
    """``relay serve`` (as ``python -m app serve``) ``count`` times, on ``prefix`` in ``redis_url``.

    Settings come only from here (inherited RELAY_* variables are dropped), so runs are comparable:
    quiet logs, and retention large enough for resume-storm's backlog plus its live traffic.
    """
    env = {k: v for k, v in child_env().items() if not k.startswith("RELAY_") and k != "REDIS_URL"}
    env.update(
        RELAY_REDIS_URL=redis_url,
        RELAY_KEY_PREFIX=prefix,
        RELAY_LOG_LEVEL="warning",
        RELAY_STREAM_MAXLEN="100000",
        RELAY_DRAIN_GRACE="0",
        RELAY_DRAIN_TIMEOUT="2",
    )
    env.update(overrides)
    servers = []
    for index in range(count):
        port = free_port()
        name = f"relay-{index}"
        command = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)]
        servers.append(
            ServerProcess(
                name, command, {**env, "RELAY_INSTANCE_NAME": f"{prefix}-{index}"}, _log(workdir, name), port
            )
        )
    return servers


def baseline_instances(
    module: str, count: int, redis_url: str, prefix: str, workdir: Path
) -> list[ServerProcess]:
    """``uvicorn benchmarks.baselines.<module>:app`` ``count`` times (one worker each)."""
    env = {**child_env(), "BENCH_REDIS_URL": redis_url, "BENCH_KEY_PREFIX": prefix}
    servers = []
    for index in range(count):
        port = free_port()
        name = f"{module}-{index}"
        command = [
            sys.executable, "-m", "uvicorn", f"benchmarks.baselines.{module}:app",
            "--host", "127.0.0.1", "--port", str(port), "--ws", "websockets-sansio",
            "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
            "--no-access-log", "--timeout-graceful-shutdown", "2",
        ]  # fmt: skip
        servers.append(ServerProcess(name, command, env, _log(workdir, name), port))
    return servers


def _log(workdir: Path, name: str) -> Path:
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory / "server.log"


async def wait_ready(urls: list[str], within: float, servers: Sequence[ServerProcess] = ()) -> None:
    """Poll ``GET /readyz`` of every instance until each answers 200."""
    deadline = time.monotonic() + within
    pending = [url.replace("ws://", "http://", 1).rstrip("/") + "/readyz" for url in urls]
    async with httpx.AsyncClient(timeout=2) as client:
        while pending:
            for server in servers:
                if server.process.poll() is not None:
                    raise ServerStartFailed(f"{server.name} exited:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerStartFailed(f"not ready within {within:.0f}s: {', '.join(pending)}")
            pending = [url for url in pending if not await _ready(client, url)]
            if pending:
                await asyncio.sleep(0.1)


async def _ready(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False
