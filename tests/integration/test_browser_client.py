"""The browser client (``relay.js``) in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) runs a page from another origin that imports the module through the project's
HAProxy config, in front of three instances that are drained, killed and restarted under it.

The page keeps what it saw on ``window.T`` (ids received per channel, gaps, errors, states, token
calls, publish results); the tests read it with ``execute_script`` and wait by polling it, always
with a deadline.
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import json
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import jwt
import pytest
import redis

from app import __version__
from tests.conftest import RelayFactory
from tests.integration.browsers import Pages, chromium, console_log, page_server
from tests.integration.test_balancer import Balancer, balanced
from tests.support import Instance, free_port, stream_ids, timeout, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.processes, pytest.mark.browser]

SECRET = "a-secret-for-the-browser-client-tests-long-enough-for-hs256"

# The page: imports the client from the relay (another origin, through the balancer) and exposes
# a small harness on window; everything it sees goes to window.T.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>relay.js under test</title>
<script type="module">
import { Relay, RelayError } from "RELAY_URL/client/relay.js";

const T = { states: [], got: {}, data: {}, gaps: [], errors: [], subs: {}, tokenCalls: 0,
            sent: 0, published: {}, failed: {} };
window.T = T;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const describe = (e) => `${e?.name ?? ""} ${e?.code ?? ""} ${e?.message ?? e}`;

window.begin = (options = {}) => {
  const { tokenUrl, ...rest } = options;
  const settings = { reconnectDelay: 100, maxReconnectDelay: 500, ...rest };
  if (tokenUrl) {
    settings.token = async () => {  // as a site's page would: ask its backend for a fresh token
      T.tokenCalls += 1;
      const response = await fetch(tokenUrl, { cache: "no-store" });
      if (!response.ok) throw new Error(`token server answered ${response.status}`);
      return (await response.text()).trim();
    };
  }
  T.relay = new Relay("RELAY_URL", settings);
  T.relay.onstate = (state) => T.states.push(state);
};

window.follow = (channel, from) => {
  const got = (T.got[channel] = []);
  const data = (T.data[channel] = []);
  T.subs[channel] = T.relay.subscribe(channel, { from, presence: false }, {
    onMessage(m) {
      got.push(m.id);
      data.push(m.data);
      if (m.channel !== channel) T.errors.push(`${channel}: got a message of ${m.channel}`);
    },
    onGap(g) { T.gaps.push(g); },
    onError(e) { T.errors.push(`${channel}: ${describe(e)}`); },
  });
};

window.positions = () =>
  Object.fromEntries(Object.entries(T.subs).map(([channel, sub]) => [channel, sub.position]));

window.connects = () => T.states.filter((state) => state === "connected").length;

window.publishOne = (channel, n) => {
  T.sent += 1;
  T.relay.publish(channel, { n }).then(
    (id) => { T.published[n] = id; },
    (e) => { T.failed[n] = describe(e); },
  );
};

window.publishPaced = async (channel, from, count, every) => {
  for (let n = from; n < from + count; n++) {
    window.publishOne(channel, n);
    if (every) await sleep(every);
  }
};

window.ready = typeof Relay === "function" && typeof RelayError === "function";
</script>
"""

SUMMARY = """
if (!window.T) return {ready: window.ready ?? false};
const counts = Object.fromEntries(Object.entries(T.got).map(([c, ids]) => [c, ids.length]));
return {states: T.states.slice(-12), connects: connects(), received: counts, gaps: T.gaps,
        errors: T.errors.slice(-10), positions: positions(), tokenCalls: T.tokenCalls, sent: T.sent,
        published: Object.keys(T.published).length, failed: T.failed};
"""


# -- the page and its browser ---------------------------------------------------------------------


class Page:
    """The test page in a browser, its relay behind ``lb``."""

    def __init__(self, browser: Any, pages: Pages, lb: Balancer) -> None:
        self.browser = browser
        browser.get(pages("/relay.html", PAGE.replace("RELAY_URL", lb.url)))
        self.wait("window.ready === true", 15, "the page to import relay.js through the balancer")

    def js(self, script: str, *args: Any) -> Any:
        return self.browser.execute_script(script, *args)

    def summary(self) -> str:
        return json.dumps(self.js(SUMMARY), indent=1)

    def wait(self, expression: str, within: float, what: str, *args: Any) -> Any:
        """Poll a JavaScript expression until it is truthy; its value. On timeout, the assertion
        says what the page saw and what it logged."""
        deadline = time.monotonic() + timeout(within)
        while True:
            value = self.js(f"return {expression};", *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout(within):.1f}s waiting for {what}\n"
                    f"page: {self.summary()}\nconsole:\n{console_log(self.browser)}"
                )
            time.sleep(0.05)

    def connects(self) -> int:
        return int(self.js("return connects();"))

    def received(self, channel: str) -> list[str]:
        return list(self.js("return T.got[arguments[0]];", channel))

    def follow(self, channels: list[str], start: str = "$") -> None:
        """Subscribe to each channel; returns once every subscription knows its position."""
        for channel in channels:
            self.js("follow(arguments[0], arguments[1]);", channel, start)
        self.wait(
            "Object.values(positions()).every((p) => typeof p === 'string' && p !== '$')",
            15,
            f"the subscriptions to {channels} to get their positions",
        )

    def wait_received(self, channel: str, count: int, within: float = 20) -> list[str]:
        self.wait(
            "T.got[arguments[0]].length >= arguments[1]",
            within,
            f"{count} messages on {channel}",
            channel,
            count,
        )
        return self.received(channel)


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as made:
        yield made


@pytest.fixture
def pages() -> Iterator[Pages]:
    with page_server() as (_, register):
        yield register


# -- the relay side -------------------------------------------------------------------------------


def page_instance(instances: list[Instance]) -> Instance:
    """The instance the page's socket is on (the only ``/ws`` connection of the test)."""
    found: list[Instance] = []

    def one() -> bool:
        found[:] = [
            i
            for i in instances
            if i.process is not None and i.process.poll() is None and i.connections("multiplexed")
        ]
        return len(found) == 1

    wait_until(one, 10, "the page's socket to be on one instance", interval=0.1)
    return found[0]


def kill(instance: Instance, sig: signal.Signals) -> None:
    instance.signal(sig)
    code = instance.wait_exit(15)
    assert code in (0, -sig), f"exited with {code}:\n{instance.log()}"


def publish(
    client: httpx.Client, url: str, channel: str, data: Any, token: str | None = None, within: float = 15
) -> str:
    """POST one message with an Idempotency-Key, sending it again (same key) until it is stored:
    instances die under these tests; the key makes each message stored once. Its id."""
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    deadline = time.monotonic() + timeout(within)
    while True:
        try:
            response = client.post(f"{url}/channels/{channel}/messages", json=data, headers=headers)
            if response.status_code == 201:
                return str(response.json()["id"])
            problem = f"{response.status_code} {response.text[:200]}"
            assert response.status_code >= 500, problem
        except httpx.HTTPError as exc:
            problem = repr(exc)
        if time.monotonic() > deadline:
            raise AssertionError(f"could not publish to {channel}: {problem}")
        time.sleep(0.05)  # before the same request again: a pace, not a wait for an event


class Publisher(threading.Thread):
    """Publishes ``{"n": n}`` round-robin to the channels at a steady pace until stopped; the ids
    acknowledged, per channel, in order."""

    def __init__(self, url: str, channels: list[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.channels = url, channels
        self.acked: dict[str, list[tuple[str, int]]] = {c: [] for c in channels}
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def count(self) -> int:
        return sum(len(acked) for acked in self.acked.values())

    def run(self) -> None:
        try:
            with httpx.Client(timeout=timeout(5)) as client:
                for n in range(100_000):
                    if self._halt.is_set():
                        return
                    channel = self.channels[n % len(self.channels)]
                    self.acked[channel].append((publish(client, self.url, channel, {"n": n}), n))
                    self._halt.wait(0.01)  # a steady rate, not a wait for an event
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def wait_for(self, count: int) -> None:
        wait_until(lambda: self.count() >= count or self.error is not None, 20, f"{count} publishes")
        self.raise_error()

    def raise_error(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the publisher failed: {self.error!r}") from self.error

    def finish(self) -> dict[str, list[tuple[str, int]]]:
        self._halt.set()
        self.join(timeout(20))
        assert not self.is_alive(), "the publisher did not stop"
        self.raise_error()
        return self.acked


class TokenServer:
    """The site's token endpoint: ``GET /token`` mints a JWT for the page (HS256, ``ttl`` seconds)
    and counts the calls. Another origin again, so it answers with CORS headers."""

    def __init__(self) -> None:
        self.ttl = 300.0
        self.issued: list[float] = []  # the exp of each token minted
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/token"

    def mint(self) -> str:
        exp = time.time() + self.ttl
        self.issued.append(exp)
        claims = {"sub": "page", "exp": exp, "subscribe": ["*"], "publish": ["*"]}
        return jwt.encode(claims, SECRET, algorithm="HS256")

    @contextlib.contextmanager
    def serving(self) -> Iterator[TokenServer]:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = owner.mint().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout(5))


def server_token() -> str:
    """The test's own token, for its publishes over HTTP."""
    claims = {"sub": "test", "exp": time.time() + 300, "publish": ["*"], "subscribe": ["*"]}
    return jwt.encode(claims, SECRET, algorithm="HS256")


# -- the tests ------------------------------------------------------------------------------------


def test_a_page_follows_three_channels_while_instances_drain_and_die(
    relay: RelayFactory, tmp_path: Path, browser: Any, pages: Pages
) -> None:
    channels = ["b-orders", "b-chat", "b-prices"]
    with balanced(relay, tmp_path, drain_grace="0", drain_timeout="1") as (instances, lb):
        page = Page(browser, pages, lb)
        page.js("begin();")
        page.follow(channels)
        publisher = Publisher(lb.url, channels)
        publisher.start()
        try:
            publisher.wait_for(30)
            page.wait("Object.values(T.got).every((ids) => ids.length >= 5)", 10, "delivery on every channel")

            drained = page_instance(instances)
            kill(drained, signal.SIGTERM)  # drains: the page's socket gets 1012
            page.wait("connects() >= 2", 15, "the page to reconnect after the drain")
            drained.start()
            publisher.wait_for(publisher.count() + 30)

            killed = page_instance(instances)
            kill(killed, signal.SIGKILL)  # dies: the page's socket just breaks
            page.wait("connects() >= 3", 15, "the page to reconnect after the kill")
            killed.start()
            publisher.wait_for(publisher.count() + 30)
        finally:
            acked = publisher.finish()

        for channel in channels:
            page.wait_received(channel, len(acked[channel]))
        summary = page.summary()
        for channel in channels:
            received = page.received(channel)
            assert received == [entry_id for entry_id, _ in acked[channel]], (channel, summary)
            data = page.js("return T.data[arguments[0]];", channel)
            assert data == [{"n": n} for _, n in acked[channel]], channel
        assert page.js("return T.gaps;") == [], summary
        assert page.js("return T.errors;") == [], summary
        states = page.js("return T.states;")
        assert states.count("connecting") >= 2, states  # it said it was away, each time
        print(f"{publisher.count()} messages on {len(channels)} channels; states {states}")


def test_publishes_during_an_outage_are_stored_exactly_once(
    relay: RelayFactory,
    tmp_path: Path,
    browser: Any,
    pages: Pages,
    redis_client: redis.Redis,
    prefix: str,
) -> None:
    channel, paced, outage = "b-once", 150, 20
    with balanced(relay, tmp_path, drain_grace="0") as (instances, lb):
        page = Page(browser, pages, lb)
        page.js("begin();")
        page.wait("connects() >= 1", 15, "the page to connect")

        # the instance it publishes through dies mid-stream
        page.js("publishPaced(arguments[0], 0, arguments[1], 10); return null;", channel, paced)
        page.wait("Object.keys(T.published).length >= 30", 15, "the first publishes to be acked")
        killed = page_instance(instances)
        kill(killed, signal.SIGKILL)
        in_flight = page.js("return T.sent - Object.keys(T.published).length;")
        page.wait(
            "Object.keys(T.published).length + Object.keys(T.failed).length >= arguments[0]",
            30,
            "every paced publish to be answered",
            paced,
        )
        assert page.js("return T.failed;") == {}, page.summary()
        killed.start()

        # every instance dies; the page publishes while nothing is there
        for instance in instances:
            kill(instance, signal.SIGKILL)
        page.wait("T.states.at(-1) !== 'connected'", 10, "the page to notice the outage")
        page.js(
            "publishPaced(arguments[0], arguments[1], arguments[2], 0); return null;", channel, paced, outage
        )
        assert page.js("return Object.keys(T.published).length;") == paced  # none acked meanwhile
        for instance in instances:
            instance.start(ready=False)
        for instance in instances:
            instance.wait_ready()
        total = paced + outage
        page.wait(
            "Object.keys(T.published).length + Object.keys(T.failed).length >= arguments[0]",
            30,
            "the publishes made during the outage to be answered",
            total,
        )
        assert page.js("return T.failed;") == {}, page.summary()
        resolved = {int(n): entry_id for n, entry_id in page.js("return T.published;").items()}

    entries: Any = redis_client.xrange(f"{prefix}:{{{channel}}}")
    stored = [(entry_id, json.loads(fields["data"])["n"]) for entry_id, fields in entries]
    counts = collections.Counter(n for _, n in stored)
    assert [n for n, c in counts.items() if c > 1] == []  # none stored twice
    assert sorted(counts) == list(range(total))  # every one stored
    assert {n: entry_id for entry_id, n in stored} == resolved  # each promise: its own entry's id
    print(f"{in_flight} publishes unacked when their instance was killed")


def test_the_token_function_is_called_again_at_each_connect(
    relay: RelayFactory, tmp_path: Path, browser: Any, pages: Pages
) -> None:
    channel = "b-secured"
    token = server_token()
    with (
        TokenServer().serving() as tokens,
        balanced(relay, tmp_path, jwt_secret=SECRET, drain_grace="0") as (instances, lb),
        httpx.Client(timeout=timeout(5)) as client,
    ):
        sent: list[str] = []

        def send(count: int) -> None:
            sent.extend(publish(client, lb.url, channel, {"n": len(sent)}, token) for _ in range(count))

        page = Page(browser, pages, lb)
        page.js("begin({tokenUrl: arguments[0]});", tokens.url)
        page.follow([channel])
        assert page.js("return T.tokenCalls;") == len(tokens.issued) == 1
        send(10)
        page.wait_received(channel, 10)

        # a drop: the next connect asks for a fresh token, and delivery goes on
        killed = page_instance(instances)
        kill(killed, signal.SIGKILL)
        page.wait("connects() >= 2", 15, "the page to reconnect")
        assert page.js("return T.tokenCalls;") >= 2
        assert len(tokens.issued) >= 2
        send(10)
        page.wait_received(channel, 20)
        killed.start()

        # a token that expires: the page gets a fresh one and misses nothing
        long_ones = len(tokens.issued)
        tokens.ttl = 3
        killed = page_instance(instances)
        kill(killed, signal.SIGKILL)
        page.wait("connects() >= 3", 15, "the page to reconnect with a short token")
        tokens.ttl = 300
        short = len(tokens.issued)
        expires = max(tokens.issued[long_ones:])
        send(5)
        wait_until(lambda: len(tokens.issued) > short, 15, "the page to ask for a token as its own expires")
        wait_until(lambda: time.time() > expires + 0.5, 10, "the short token to have expired")
        send(5)
        page.wait("T.states.at(-1) === 'connected'", 15, "the page to be connected with its fresh token")
        send(5)
        received = page.wait_received(channel, len(sent))
        assert received == sent, page.summary()
        assert page.js("return T.gaps;") == []
        print(f"{len(tokens.issued)} tokens issued; states {page.js('return T.states;')}")


def test_a_gap_is_reported_when_retention_removed_what_the_page_had_not_seen(
    relay: RelayFactory,
    tmp_path: Path,
    browser: Any,
    pages: Pages,
    redis_client: redis.Redis,
    prefix: str,
) -> None:
    channel = "b-gap"
    key = f"{prefix}:{{{channel}}}"
    with (
        balanced(relay, tmp_path, drain_grace="0") as (instances, lb),
        httpx.Client(timeout=timeout(5)) as client,
    ):
        page = Page(browser, pages, lb)
        page.js("begin();")
        page.follow([channel])
        first = publish(client, lb.url, channel, {"n": 1})
        assert page.wait_received(channel, 1) == [first]

        for instance in instances:  # the page's socket goes away, and stays away
            kill(instance, signal.SIGKILL)
        page.wait("T.states.at(-1) !== 'connected'", 10, "the page to notice the outage")
        # meanwhile, through an instance of its own that keeps two entries, m2..m6 are published
        trimming = relay(stream_maxlen="2").start()
        later = [publish(client, trimming.http, channel, {"n": n}) for n in range(2, 7)]
        trimming.stop()
        assert stream_ids(redis_client, key) == later[-2:]  # m2..m4 (and m1) are gone

        for instance in instances:
            instance.start(ready=False)
        for instance in instances:
            instance.wait_ready()
        page.wait("T.gaps.length >= 1", 20, "the gap to be reported")
        page.wait_received(channel, 3)
        last = publish(client, lb.url, channel, {"n": 7})
        received = page.wait_received(channel, 4)
        summary = page.summary()
        assert received == [first, *later[-2:], last], summary
        assert page.js("return T.data[arguments[0]];", channel) == [{"n": n} for n in (1, 5, 6, 7)]
        assert page.js("return T.gaps;") == [{"channel": channel, "from": first, "next": later[-2]}], summary
        assert page.js("return positions()[arguments[0]];", channel) == last
        assert page.connects() >= 2


def test_the_module_is_served_to_other_origins_and_revalidated(relay: RelayFactory, tmp_path: Path) -> None:
    with (
        balanced(relay, tmp_path, drain_grace="0") as (_, lb),
        httpx.Client(base_url=lb.url, timeout=timeout(5)) as client,
    ):
        origin = {"Origin": "https://shop.example"}
        module = client.get("/client/relay.js", headers=origin)
        assert module.status_code == 200
        assert module.headers["access-control-allow-origin"] == "*"
        assert module.headers["content-type"].startswith("text/javascript")
        assert "no-cache" in module.headers["cache-control"]
        assert re.search(r"^export\s.*\bRelay\b", module.text, re.M), "relay.js does not export Relay"
        etag = module.headers["etag"]
        assert etag

        again = client.get("/client/relay.js", headers={**origin, "If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["access-control-allow-origin"] == "*"

        types = client.get("/client/relay.d.ts", headers=origin)
        assert types.status_code == 200
        assert types.headers["access-control-allow-origin"] == "*"
        assert "Relay" in types.text

        versioned = client.get(f"/client/{__version__}/relay.js", headers=origin)
        assert versioned.status_code == 200
        assert versioned.content == module.content
        assert versioned.headers["cache-control"] == "public, max-age=86400"
        assert client.get("/client/0.0.0-other/relay.js").status_code == 404
        assert client.get("/client/secrets.txt").status_code == 404
