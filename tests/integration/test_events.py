"""Server-Sent Events (``GET /channels/C/events``) on real instances: read by ``curl -N`` and by an
HTTP client, resumed with ``Last-Event-ID``, refused, pinged, ended on drain and on expiry; and a
client that reads nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import jwt
import pytest
import redis

from tests.conftest import RelayFactory, base_env
from tests.support import Instance, publish_all, stream_ids, timeout, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.processes]

SECRET = "an-events-test-secret-of-enough-length-for-hs256"


_http = threading.local()


def publish(instance: Instance, channel: str, payload: Any = None, *, body: bytes | None = None) -> str:
    content = body if body is not None else json.dumps(payload).encode()
    reply = _http.client.post(f"{instance.http}/channels/{channel}/messages", content=content)
    assert reply.status_code == 201, reply.text
    entry_id: str = reply.json()["id"]
    return entry_id


@pytest.fixture(autouse=True)
def http_client() -> Iterator[None]:
    """One kept-alive client for the test's publishes (a new httpx client costs ~50 ms)."""
    with httpx.Client(timeout=5) as client:
        _http.client = client
        yield
        del _http.client


class EventReader:
    """Events read from the lines of a stream; comments come as ``{"comment": text}``."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)

    def next(self) -> dict[str, str]:
        event: dict[str, str] = {}
        for line in self._lines:
            line = line.rstrip("\n")
            if not line:
                if event:
                    return event
                continue
            field, _, value = line.partition(":")
            event["comment" if field == "" else field] = value[1:] if value.startswith(" ") else value
        raise EOFError("the stream ended")

    def events(self, count: int) -> list[dict[str, str]]:
        """The next ``count`` events that are not comments or a ``retry``."""
        out: list[dict[str, str]] = []
        while len(out) < count:
            event = self.next()
            if "event" in event:
                out.append(event)
        return out


@contextlib.contextmanager
def stream(url: str, headers: dict[str, str] | None = None, read: float = 10) -> Iterator[EventReader]:
    """An open stream whose ``subscribed`` event has been read (it is in ``reader.subscribed``)."""
    with (
        httpx.Client(timeout=httpx.Timeout(timeout(read), connect=5)) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = EventReader(response.iter_lines())
        first = reader.events(1)[0]
        assert first["event"] == "subscribed", first
        reader.subscribed = first  # type: ignore[attr-defined]
        yield reader


def message_ids(events: list[dict[str, str]]) -> list[str]:
    assert all(e["event"] == "message" for e in events), events
    return [e["id"] for e in events]


def test_curl_follows_a_channel_published_to_on_another_instance_until_the_drain(
    relay: RelayFactory,
) -> None:
    a, b = relay(drain_grace="0.2").start(), relay().start()
    old = [publish(b, "news", {"n": n}) for n in range(3)]
    url = f"{a.http}/channels/news/events?from=0"
    command = ["curl", "-sN", "--max-time", str(int(timeout(30))), url]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as curl:
        assert curl.stdout is not None
        reader = EventReader(curl.stdout)
        assert reader.events(1)[0] == {
            "event": "subscribed",
            "id": "0-0",
            "data": '{"channel":"news","id":"0-0"}',
        }
        received = reader.events(3)
        assert message_ids(received) == old
        assert [json.loads(e["data"]) for e in received] == [{"n": 0}, {"n": 1}, {"n": 2}]

        pretty = b'{\n  "lines": [1,\r\n 2]\n}'  # a producer's JSON over several lines: one data line
        new = publish(b, "news", body=pretty)
        event = reader.events(1)[0]
        assert event["id"] == new
        assert json.loads(event["data"]) == {"lines": [1, 2]}

        a.signal(signal.SIGTERM)  # the drain ends the response: curl ends as for a whole body
        assert curl.wait(timeout(10)) == 0


@pytest.mark.parametrize("server", ["relay serve", "uvicorn app.main:app"])
def test_last_event_id_resumes_exactly_and_a_gap_is_told_on_every_reconnect(
    relay: RelayFactory,
    redis_client: redis.Redis,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    server: str,
) -> None:
    if server == "relay serve":
        instance = relay(stream_maxlen="100").start()
    else:  # plain uvicorn: no direct writes, every event through ASGI
        env = base_env(redis_url=redis_url, key_prefix=prefix, stream_maxlen="100")
        command = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "{port}"]
        instance = Instance(env, tmp_path / "uvicorn.log", command)
        try:
            instance.start()
        except AssertionError:
            instance.stop()
            raise
    try:
        ids = [publish(instance, "resume", {"n": n}) for n in range(6)]
        with stream(f"{instance.http}/channels/resume/events?from=0") as reader:
            assert message_ids(reader.events(2)) == ids[:2]
        # what EventSource sends when it reconnects; it wins over the URL's from=0
        headers = {"Last-Event-ID": ids[1]}
        with stream(f"{instance.http}/channels/resume/events?from=0", headers) as reader:
            assert reader.subscribed["id"] == ids[1]  # type: ignore[attr-defined]
            assert message_ids(reader.events(4)) == ids[2:]
            live = publish(instance, "resume", {"n": "live"})
            assert message_ids(reader.events(1)) == [live]

        # retention (RELAY_STREAM_MAXLEN, approximate) removes what the reader had not seen
        more = asyncio.run(publish_all(f"{instance.ws}/ws/producer/resume", list(range(400))))
        retained = stream_ids(redis_client, f"{prefix}:{{resume}}")
        assert len(retained) < 400
        assert retained == more[-len(retained) :]
        for _ in range(2):  # a gap has no id: the next reconnect is told again
            with stream(f"{instance.http}/channels/resume/events", {"Last-Event-ID": ids[1]}) as reader:
                gap, *rest = reader.events(1 + len(retained))
                assert gap["event"] == "gap"
                assert "id" not in gap
                assert json.loads(gap["data"]) == {"from": ids[1], "next": retained[0]}
                assert message_ids(rest) == retained
        # each client that left ended its stream (the relay heard of it, with nothing to write)
        wait_until(lambda: instance.connections("events") == 0, 5, "the streams of gone clients to end")
    finally:
        instance.stop()


def test_refusals_tokens_pings_and_expiry(relay: RelayFactory) -> None:
    instance = relay(jwt_secret=SECRET, sse_ping_interval="0.3").start()
    base = f"{instance.http}/channels"

    def token(**claims: Any) -> str:
        return jwt.encode({"exp": time.time() + 60, **claims}, SECRET, algorithm="HS256")

    refusals = {
        f"{base}/ok/events": 401,
        f"{base}/ok/events?token=not-a-jwt": 401,
        f"{base}/ok/events?token={token(subscribe=['other'])}": 403,
        f"{base}/bad%20name/events?token={token(subscribe=['*'])}": 400,
        f"{base}/ok/events?from=yesterday&token={token(subscribe=['*'])}": 400,
    }
    for url, status in refusals.items():
        reply = httpx.get(url, timeout=5)
        assert reply.status_code == status, (url, reply.text)
        assert reply.json()["type"] == "error"

    with (
        httpx.Client(timeout=timeout(10)) as client,
        client.stream("GET", f"{base}/ok/events?token={token(subscribe=['o*'])}") as response,
    ):
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        reader = EventReader(response.iter_lines())
        kinds = [next(iter(reader.next())) for _ in range(4)]  # retry, subscribed, then pings
        assert kinds[:2] == ["retry", "event"]
        assert kinds[2:] == ["comment", "comment"]

    started = time.monotonic()
    expiring = jwt.encode({"exp": int(time.time()) + 2, "subscribe": ["ok"]}, SECRET, algorithm="HS256")
    with stream(f"{base}/ok/events?token={expiring}") as reader, pytest.raises(EOFError):
        read_to_the_end(reader)
    assert time.monotonic() - started < timeout(5)


def read_to_the_end(reader: EventReader) -> None:
    for _ in range(100):  # pings, until the stream ends
        reader.next()


def test_a_stream_that_reads_nothing_is_cut_off_and_does_not_slow_another(relay: RelayFactory) -> None:
    instance = relay(sse_ping_interval="0.5", send_buffer_bytes="16384", consumer_buffer="64").start()
    stuck = socket.create_connection(("127.0.0.1", instance.port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stuck.sendall(b"GET /channels/flood/events HTTP/1.1\r\nHost: relay\r\n\r\n")
        wait_until(lambda: instance.connections("events") == 1, 5, "the stuck stream to open")
        with stream(f"{instance.http}/channels/flood/events", read=20) as reader:
            received: list[dict[str, str]] = []
            reading = threading.Thread(target=lambda: received.extend(reader.events(300)), daemon=True)
            reading.start()
            payload = {"pad": "x" * 4000}
            ids = [publish(instance, "flood", payload) for _ in range(300)]  # 1.2 MB: far over the buffers
            reading.join(timeout(20))
            assert message_ids(received) == ids
            # the stuck one read nothing for two ping intervals: cut off, while the other stays
            wait_until(lambda: instance.connections("events") == 1, 5, "the stuck stream to be cut off")
    finally:
        stuck.close()
    assert "read nothing" in instance.log()


def test_a_drained_stream_ends_its_body_and_writes_nothing_after_it(relay: RelayFactory) -> None:
    """Streams on a kept-alive connection end with the chunked body's last chunk, and no event
    of the still flowing channel follows it (a proxy reusing the connection would read garbage)."""
    a, b = relay(drain_grace="0.3").start(), relay().start()
    sockets = []
    try:
        for _ in range(150):
            sock = socket.create_connection(("127.0.0.1", a.port))
            sock.sendall(b"GET /channels/kept/events HTTP/1.1\r\nHost: relay\r\n\r\n")
            sockets.append(sock)
        wait_until(lambda: a.connections("events") == 150, 10, "every stream to open")
        stop = threading.Event()

        def flow() -> None:
            with httpx.Client(timeout=5) as client:
                for n in range(10_000):
                    if stop.wait(0.002):
                        return
                    client.post(f"{b.http}/channels/kept/messages", json={"n": n})

        flowing = threading.Thread(target=flow, daemon=True)
        flowing.start()
        try:
            wait_until(lambda: publish_count(b) > 20, 5, "messages to flow")
            a.signal(signal.SIGTERM)
            a.wait_exit(15)
        finally:
            stop.set()
            flowing.join(timeout(10))
        for sock in sockets:
            received = read_to_eof(sock)
            head, _, body = received.partition(b"\r\n\r\n")
            assert b" 200 " in head.split(b"\r\n")[0], head[:100]
            end = body.find(b"\r\n0\r\n\r\n")
            assert end >= 0, body[-200:]
            assert body[end + len(b"\r\n0\r\n\r\n") :] == b"", "bytes after the body's end"
    finally:
        for sock in sockets:
            sock.close()


def publish_count(instance: Instance) -> float:
    return instance.metric("relay_messages_published_total")


def read_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(timeout(10))
    chunks = []
    for _ in range(100_000):
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def test_a_full_instance_tells_an_event_source_to_come_back_and_others_503(relay: RelayFactory) -> None:
    instance = relay(max_connections="1").start()
    url = f"{instance.http}/channels/full/events"
    with stream(url):
        plain = httpx.get(url, timeout=5)
        assert plain.status_code == 503
        assert plain.json()["code"] == "unavailable"
        # an EventSource stops for good on anything but 200: it gets an empty stream and a retry
        asked = httpx.get(url, headers={"Accept": "text/event-stream"}, timeout=5)
        assert asked.status_code == 200
        assert asked.headers["content-type"].startswith("text/event-stream")
        assert asked.headers["access-control-allow-origin"] == "*"
        lines = asked.text.splitlines()
        assert lines[0] == "retry: 1000"
        assert lines[2].startswith(": unavailable: this instance is full")


def test_allowed_origins_hold_for_streams_and_name_the_origin_in_cors(relay: RelayFactory) -> None:
    instance = relay(allowed_origins="https://good.example").start()
    url = f"{instance.http}/channels/o/events"
    refused = httpx.get(url, headers={"Origin": "https://evil.example"}, timeout=5)
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    with (
        httpx.Client(timeout=timeout(10)) as client,
        client.stream("GET", url, headers={"Origin": "https://good.example"}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://good.example"
        assert response.headers["vary"].lower() == "origin"
