"""Helpers for tests that run real processes: relay instances, redis-server, WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.client import Consumer, Gap, Message

ROOT = Path(__file__).resolve().parent.parent
FACTOR = float(os.environ.get("RELAY_TEST_TIMEOUT_FACTOR", "1"))


def timeout(seconds: float) -> float:
    """Every wait in the tests goes through this, so slow machines can scale them all."""
    return seconds * FACTOR


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, within: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` (for state only a poll can see, such as a port or a process) until true."""
    deadline = time.monotonic() + timeout(within)
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout(within):.1f}s waiting for {what}")


def events_of(consumer: Consumer) -> contextlib.aclosing[AsyncGenerator[Message | Gap, None]]:
    """The consumer's events, its socket closed when the block ends: a loop left early would leave
    the socket to the garbage collector, and its ResourceWarning to whichever test runs then."""
    return contextlib.aclosing(consumer.__aiter__())


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float, what: str, interval: float = 0.05
) -> None:
    """:func:`wait_until` for async tests: poll an async ``check`` without blocking the event loop
    (open sockets keep being served meanwhile)."""
    try:
        async with asyncio.timeout(timeout(within)):
            while not await check():  # noqa: ASYNC110 - for state only a poll can see
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout(within):.1f}s waiting for {what}") from None


class Instance:
    """One ``relay serve`` subprocess on a free port, logging to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, command: list[str] | None = None) -> None:
        self.port = free_port()
        self.env = env
        self.log_path = log_path
        self.command = command or [sys.executable, "-m", "app", "serve", "--port", str(self.port)]
        self.command = [part.replace("{port}", str(self.port)) for part in self.command]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, ready: bool = True) -> Instance:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=self.log_path.parent,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        if ready:
            self.wait_ready()
        return self

    def readyz(self) -> int:
        try:
            return httpx.get(f"{self.http}/readyz", timeout=2).status_code
        except httpx.HTTPError:
            return 0

    def wait_ready(self, within: float = 15) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"relay exited with {self.process.returncode}:\n{self.log()}")
            return self.readyz() == 200

        wait_until(ready, within, f"relay on port {self.port} to be ready")

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait_exit(self, within: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout(within))

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout(10))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def metric(self, name: str) -> float:
        """The value of an unlabelled metric from /metrics."""
        text = httpx.get(f"{self.http}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"metric {name} not found")

    def connections(self, role: str) -> float:
        """Its open connections of one role (``relay_connections{role}``); 0 when it does not answer."""
        try:
            text = httpx.get(f"{self.http}/metrics", timeout=2).text
        except httpx.HTTPError:
            return 0.0
        prefix = f'relay_connections{{role="{role}"}} '
        found = next((line for line in text.splitlines() if line.startswith(prefix)), None)
        return float(found[len(prefix) :]) if found else 0.0


class RedisServer:
    """A redis-server of the test's own on a free port: can be stopped and started again."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not installed (scripts/test installs it)")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self._clients: list[redis.Redis] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A client for the test; closed when the server's fixture ends."""
        client = redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)
        self._clients.append(client)
        return client

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--appendonly", "yes", "--save", "", "--daemonize", "no"]
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_until(self._answers, 10, f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def resume(self) -> None:
        """Let a server stopped with SIGSTOP go on (nothing when it is not running)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # redis-server writes its AOF and exits
            try:
                self.process.wait(timeout(10))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# -- WebSocket clients ----------------------------------------------------------------------------


async def recv_json(ws: ClientConnection, within: float = 5) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout(within))
    value = json.loads(raw)
    assert isinstance(value, dict), value
    return value


async def close_code(ws: ClientConnection, within: float = 10) -> int | None:
    """Read (and drop) frames until the server closes; the close code it sent."""
    try:
        for _ in range(100_000):
            await asyncio.wait_for(ws.recv(), timeout(within))
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    raise AssertionError("the server kept sending and never closed")


async def recv_messages(ws: ClientConnection, count: int, within: float = 10) -> list[dict[str, Any]]:
    """The next ``count`` frames, which must all be messages."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout(within)):
        while len(out) < count:
            frame = json.loads(await ws.recv())
            assert frame["type"] == "message", frame
            out.append(frame)
    return out


@contextlib.asynccontextmanager
async def consumer(url: str, **kwargs: Any) -> Any:
    """A consumer connection whose ``subscribed`` frame has been read: it is following."""
    async with connect(url, open_timeout=timeout(10), **kwargs) as ws:
        first = await recv_json(ws)
        assert first["type"] == "subscribed", first
        ws.subscribed = first  # type: ignore[attr-defined]
        yield ws


async def publish_all(url: str, payloads: list[Any], within: float = 20) -> list[str]:
    """Send every payload without waiting, then collect one ack per frame; returns the ids in order."""
    async with connect(url, open_timeout=timeout(10)) as ws:
        for payload in payloads:
            await ws.send(json.dumps(payload))
        ids = []
        for _ in payloads:
            reply = await recv_json(ws, within)
            assert reply["type"] == "ack", reply
            ids.append(reply["id"])
        return ids


def stream_ids(client: redis.Redis, key: str) -> list[str]:
    entries: Any = client.xrange(key)  # a decoding client: (id, fields) pairs of str
    return [str(entry_id) for entry_id, _ in entries]


@contextlib.contextmanager
def running(*instances: Instance) -> Iterator[None]:
    try:
        for instance in instances:
            instance.start(ready=False)
        for instance in instances:
            instance.wait_ready()
        yield
    finally:
        for instance in instances:
            instance.stop()
