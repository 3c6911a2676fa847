"""The edges of a connection, probed from outside the way a hostile client or a stuck one would:
request heads too big or too slow, handshakes with big cookie jars, peers that stop reading,
frames that break the protocol. Raw sockets, so that nothing in a client library smooths them over.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx2 as httpx
import pytest
from websockets.asyncio.client import connect

from tests.conftest import RelayFactory
from tests.support import close_code, eventually, publish_all, recv_json, timeout

pytestmark = [pytest.mark.redis, pytest.mark.processes]

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def handshake(path: str, *extra: str) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def cookies(total: int) -> str:
    """A ``Cookie`` header of about ``total`` bytes, in cookies of at most 4 KB as browsers keep."""
    size = 4000
    jar = [f"c{i}={'v' * (size - 8)}" for i in range(total // size)]
    return "Cookie: " + "; ".join(jar)


async def exchange(
    port: int, head: bytes, within: float = 5, until: bytes = b"\r\n\r\n"
) -> tuple[int, bytes, float]:
    """Send ``head`` and read the answer until ``until`` (by default the end of its head) or the
    relay's close; its status, what was read and the seconds it took."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        received = b""
        async with asyncio.timeout(timeout(within)):
            while until not in received:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                received += chunk
        status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.1 ") else 0
        return status, received, time.monotonic() - started
    finally:
        writer.close()


async def until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the relay sends until it closes the connection."""
    received = b""
    async with asyncio.timeout(timeout(within)):
        while chunk := await reader.read(65536):
            received += chunk
    return received


def body_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("ws", ["wire", "websockets-sansio", "websockets"])
async def test_handshakes_with_big_cookie_jars_are_served_and_bigger_ones_refused_at_once(
    relay: RelayFactory, ws: str
) -> None:
    instance = relay(ws=ws).start()
    status, answer, _ = await exchange(
        instance.port, handshake("/ws/consumer/jar", cookies(20_000)), until=b'"type":"subscribed"'
    )
    assert status == 101, answer[:200]

    status, answer, seconds = await exchange(instance.port, handshake("/ws/consumer/jar", cookies(40_000)))
    assert (status, seconds < timeout(1)) == (431, True), answer[:200]
    assert b'"code":"headers_too_large"' in answer

    many = [f"X-Field-{i}: {i}" for i in range(300)]
    status, answer, _ = await exchange(instance.port, handshake("/ws/consumer/jar", *many))
    assert status == 431

    status, answer, seconds = await exchange(
        instance.port, handshake("/ws/consumer/jar?from=" + "1" * 10_000)
    )
    assert (status, seconds < timeout(1)) == (414, True)
    assert b'"code":"uri_too_long"' in answer


async def test_a_position_too_long_to_be_an_id_is_a_bad_request_not_a_hang(relay: RelayFactory) -> None:
    instance = relay().start()
    status, answer, _ = await exchange(instance.port, handshake("/ws/consumer/jar?from=" + "1" * 5000))
    assert status == 400
    assert b"invalid_id" in answer


async def test_oversized_heads_are_refused_on_every_route_and_memory_comes_back(relay: RelayFactory) -> None:
    instance = relay().start()
    field = "X-Big: " + "a" * 40_000
    for method, path in [("GET", "/healthz"), ("GET", "/channels"), ("POST", "/channels/big/messages")]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{field}\r\nContent-Length: 2\r\n\r\n{{}}"
        status, answer, _ = await exchange(instance.port, head.encode())
        assert status == 431, (path, answer[:200])
        assert body_of(answer).startswith(b'{"type":"error","code":"headers_too_large"')

    before = instance.rss_bytes()

    async def eight_megabytes_of_headers() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 8_000_000)
            answer = await until_closed(reader, within=10)
            return int(answer.split(b" ", 2)[1])
        finally:
            writer.close()

    assert await asyncio.gather(*[eight_megabytes_of_headers() for _ in range(10)]) == [431] * 10
    assert instance.rss_bytes() - before < 20 * 1024 * 1024
    assert httpx.get(f"{instance.http}/healthz", timeout=5).status_code == 200


async def test_a_refused_head_is_answered_after_the_requests_before_it(relay: RelayFactory) -> None:
    """Pipelined: the refusal waits for the earlier answer, and a head that starts in the same
    read as the end of a big body is not counted with that body."""
    instance = relay().start()
    reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
    try:
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
        )
        answers = await until_closed(reader, within=5)
    finally:
        writer.close()
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answers) == [b"200", b"431"]

    body = b'{"pad": "' + b"x" * 60_000 + b'"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
    try:
        writer.write(
            b"POST /channels/pipelined/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (len(body), body)
            + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        )
        first = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"\r\n")  # the second head ends in a later read
        await reader.readexactly(int(first.split(b"content-length: ")[1].split(b"\r\n")[0]))
        second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
    finally:
        writer.close()
    assert (first.split(b" ")[1], second.split(b" ")[1]) == (b"201", b"200")
    assert "Traceback" not in instance.log()


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for a few thousand sockets in this process and the instances it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 8192:
        pytest.fail(f"the file-descriptor limit is {hard}: this test needs 8192 (ulimit -n)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 8192), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_stalled_half_handshakes_are_closed_within_the_timeout_while_others_are_served(
    relay: RelayFactory, many_files: None
) -> None:
    instance = relay(handshake_timeout="2").start()
    opened = time.monotonic()

    async def stall(n: int) -> tuple[float, bytes]:
        """Half the connections send nothing; half trickle a head that never ends, a field every
        half second (which must not push the deadline back)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
        try:
            answer = asyncio.ensure_future(until_closed(reader, within=10))
            if n % 2:
                writer.write(b"GET /ws/consumer/slow HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            for _ in range(40):
                done, _ = await asyncio.wait([answer], timeout=0.5)
                if done:
                    break
                if n % 2:
                    writer.write(b"X-Slow: y\r\n")
            return time.monotonic() - opened, await answer
        finally:
            writer.close()

    # the normal client runs in a process of its own: this one is busy with two thousand sockets
    pinger = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ROUND_TRIPS, str(instance.port), "3.5", stdout=asyncio.subprocess.PIPE
    )
    stalled = [asyncio.create_task(stall(n)) for n in range(2000)]
    out, _ = await asyncio.wait_for(pinger.communicate(), timeout(15))
    round_trips = sorted(json.loads(out))
    results = await asyncio.gather(*stalled)
    closed_after = sorted(seconds for seconds, _ in results)
    assert closed_after[-1] < 2 + timeout(3), closed_after[-10:]
    assert all(answer.startswith(b"HTTP/1.1 408 ") for n, (_, answer) in enumerate(results) if n % 2)
    assert all(answer == b"" for n, (_, answer) in enumerate(results) if not n % 2)
    assert len(round_trips) > 50
    # the 99th percentile, and the worst: the one tick where a thousand 408s and closes are due.
    # An instance that waited on the stalled ones would answer in seconds (the 2 s timeout); the
    # bounds leave room for a busy machine (a CI run saw a 51 ms 99th percentile against 3.5 ms
    # typical), and the latency itself is the benchmarks' business
    assert round_trips[len(round_trips) * 99 // 100] < timeout(0.25), round_trips[-10:]
    assert round_trips[-1] < timeout(0.5), round_trips[-10:]


ROUND_TRIPS = """
import json, socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
out, end = [], time.monotonic() + seconds
while time.monotonic() < end:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    out.append(time.monotonic() - started)
    time.sleep(0.02)
print(json.dumps(out))
"""
"""A client that asks ``GET /healthz`` on a new connection every 20 ms; prints the round trips."""


def send_queues(port: int) -> list[int]:
    """The kernel's send queue of each established connection of the relay's port, in bytes."""
    out = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [int(line.split()[1]) for line in out.splitlines() if line.strip()]


@pytest.fixture
async def stuck_readers() -> AsyncIterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


async def test_consumers_that_stop_reading_are_dropped_and_what_they_pinned_released(
    relay: RelayFactory, stuck_readers: list[socket.socket]
) -> None:
    instance = relay(ws_ping_interval="3", ws_ping_timeout="2", send_buffer_bytes="65536").start()
    baseline = instance.rss_bytes()
    loop = asyncio.get_running_loop()
    for _ in range(100):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # a reader that takes little, then nothing
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", instance.port))
        await loop.sock_sendall(sock, handshake("/ws/consumer/stuck"))
        stuck_readers.append(sock)
    await eventually(
        lambda: _true(len(send_queues(instance.port)) == 100), within=10, what="100 consumers connected"
    )

    # they read nothing: what the relay sends them piles up, until the keepalive drops them
    ids = await publish_all(
        f"{instance.ws}/ws/producer/stuck", [{"fill": "x" * 8000, "n": n} for n in range(200)]
    )
    queues = send_queues(instance.port)
    assert sum(queues) > 100 * 32768, queues  # they hold what they did not read...
    assert max(queues) <= 2 * 65536 + 16384  # ...up to the capped send buffer (Linux doubles it)

    await eventually(
        lambda: _true(send_queues(instance.port) == []), within=3 + 2 + 3, what="every stuck reader dropped"
    )
    # what was sent to them: 100 x 200 x 8 KB = 160 MB, had the relay kept a copy for each; what it
    # does hold (one frame per message, the capped kernel buffers outside RSS) is a few MB, but
    # freed memory need not go back to the system: catch-up reads of readers that fell behind
    # left up to 52 MB behind in RSS on a loaded machine (the bound was 15 MB, and flaky)
    assert instance.rss_bytes() - baseline < 64 * 1024 * 1024
    assert instance.log_path.read_text().count("closed by relay, code 1011 (keepalive ping timeout)") == 100
    # a consumer that reads is served as before
    async with connect(f"{instance.ws}/ws/consumer/stuck?from={ids[-2]}") as ws:
        assert (await recv_json(ws))["type"] == "subscribed"
        assert (await recv_json(ws))["data"]["n"] == 199


async def _true(value: bool) -> bool:
    return value


async def test_invalid_utf8_closes_with_1007_in_one_log_line_said_by_the_relay(relay: RelayFactory) -> None:
    instance = relay().start()
    async with connect(f"{instance.ws}/ws/producer/utf8") as ws:
        await ws.send(b"\xff\xfe not text", text=True)
        assert await close_code(ws) == 1007
    await eventually(lambda: _true("closed by" in instance.log()), within=5, what="the close logged")
    log = instance.log()
    assert "Traceback" not in log
    assert "closed by relay, code 1007" in log
