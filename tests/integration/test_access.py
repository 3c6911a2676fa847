"""Tokens, origins and limits on real instances with real clients."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import RelayFactory
from tests.support import Instance, close_code, consumer, publish_all, recv_json, recv_messages, timeout

pytestmark = [pytest.mark.redis, pytest.mark.processes]

SECRET = "a-test-secret-long-enough-for-every-hmac-algorithm-even-hs512-needs-64-bytes"


def hs256_by_hand(claims: dict[str, Any], key: bytes) -> str:
    """PyJWT refuses to sign HS256 with a PEM key; an attacker's own code does not."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(hmac.new(key, head.encode(), hashlib.sha256).digest())


def token(*, key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    body = {"exp": time.time() + 300, "aud": "relay-tests", "iss": "tests", **claims}
    return jwt.encode(body, key, algorithm=algorithm)


@pytest.fixture
def secured(relay: RelayFactory) -> Instance:
    return relay(jwt_secret=SECRET, jwt_audience="relay-tests", jwt_issuer="tests").start()


async def refusal(url: str, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, open_timeout=timeout(5), **kwargs):
            pass
    return refused.value.response.status_code, json.loads(refused.value.response.body)["code"]


BAD_TOKENS = {
    "wrong signature": lambda: token(key=SECRET[::-1], publish=["*"], subscribe=["*"]),
    "wrong algorithm": lambda: token(algorithm="HS512", publish=["*"], subscribe=["*"]),
    "alg none": lambda: jwt.encode({"exp": time.time() + 300, "publish": ["*"]}, None, algorithm="none"),
    "expired": lambda: token(exp=time.time() - 10, publish=["*"], subscribe=["*"]),
    "not yet valid": lambda: token(nbf=time.time() + 300, publish=["*"], subscribe=["*"]),
    "wrong audience": lambda: token(aud="someone-else", publish=["*"], subscribe=["*"]),
    "wrong issuer": lambda: token(iss="someone-else", publish=["*"], subscribe=["*"]),
    "no expiry": lambda: jwt.encode(
        {"aud": "relay-tests", "iss": "tests", "publish": ["*"]}, SECRET, "HS256"
    ),
    "garbage": lambda: "not.a.jwt",
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_are_refused_at_the_handshake_in_the_header_and_the_query(
    secured: Instance, case: str
) -> None:
    bad = BAD_TOKENS[case]()
    for path in ("/ws/producer/c", "/ws/consumer/c", "/ws/consumer/c?group=g"):
        joiner = "&" if "?" in path else "?"
        assert await refusal(
            f"{secured.ws}{path}", additional_headers={"Authorization": f"Bearer {bad}"}
        ) == (
            401,
            "unauthorized",
        )
        assert await refusal(f"{secured.ws}{path}{joiner}token={bad}") == (401, "unauthorized")
    response = httpx.post(
        f"{secured.http}/channels/c/messages", content="1", headers={"Authorization": f"Bearer {bad}"}
    )
    assert (response.status_code, response.json()["code"]) == (401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_no_token_is_refused_everywhere(
    secured: Instance, redis_client: redis.Redis, prefix: str
) -> None:
    for path in ("/ws/producer/c", "/ws/consumer/c", "/ws/producer", "/ws/consumer"):
        assert await refusal(f"{secured.ws}{path}") == (401, "unauthorized")
    for method, path in (
        ("POST", "/channels/c/messages"),
        ("GET", "/channels/c/messages"),
        ("GET", "/channels"),
    ):
        assert httpx.request(method, f"{secured.http}{path}", content="1").status_code == 401
    assert redis_client.exists(f"{prefix}:{{c}}") == 0  # nothing was written by a refused client


async def test_a_token_covers_only_its_channels(secured: Instance) -> None:
    rights = token(publish=["orders", "chat:*"], subscribe=["chat:*"])
    bearer = {"Authorization": f"Bearer {rights}"}
    assert await refusal(f"{secured.ws}/ws/producer/invoices", additional_headers=bearer) == (
        403,
        "forbidden",
    )
    assert await refusal(f"{secured.ws}/ws/consumer/orders?token={rights}") == (403, "forbidden")
    assert await refusal(f"{secured.ws}/ws/consumer/orders?group=g&token={rights}") == (403, "forbidden")
    async with consumer(f"{secured.ws}/ws/consumer/chat:room-1?token={rights}") as ws:
        async with connect(f"{secured.ws}/ws/producer/chat:room-1", additional_headers=bearer) as producer:
            await producer.send('"hi"')
            ack = await recv_json(producer)
        assert [m["id"] for m in await recv_messages(ws, 1)] == [ack["id"]]
    async with connect(f"{secured.ws}/ws/producer/orders?token={rights}") as producer:
        await producer.send("1")
        assert (await recv_json(producer))["type"] == "ack"
    assert (
        httpx.post(f"{secured.http}/channels/invoices/messages", content="1", headers=bearer).status_code
        == 403
    )
    assert httpx.get(f"{secured.http}/channels/orders/messages", headers=bearer).status_code == 403
    assert httpx.get(f"{secured.http}/channels/chat:room-1/messages", headers=bearer).status_code == 200
    listed = [c["name"] for c in httpx.get(f"{secured.http}/channels", headers=bearer).json()["channels"]]
    assert listed == ["chat:room-1"]  # orders exists, but this token may not subscribe to it


async def test_a_socket_is_closed_with_4401_when_its_token_expires(secured: Instance) -> None:
    short = token(exp=time.time() + 2, publish=["*"], subscribe=["*"])
    async with (
        consumer(f"{secured.ws}/ws/consumer/c?token={short}") as listening,
        connect(f"{secured.ws}/ws/producer/c?token={short}") as producing,
    ):
        assert await close_code(listening, within=10) == 4401
        assert await close_code(producing, within=10) == 4401


async def test_public_key_tokens_and_no_algorithm_confusion(relay: RelayFactory, tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    (tmp_path / "public.pem").write_text(pem)
    a = relay(jwt_public_key_file=str(tmp_path / "public.pem")).start()
    good = jwt.encode({"exp": time.time() + 300, "publish": ["c"]}, private, algorithm="RS256")
    async with connect(f"{a.ws}/ws/producer/c?token={good}") as producer:
        await producer.send("1")
        assert (await recv_json(producer))["type"] == "ack"
    # HS256 signed with the public key as the secret: the classic confusion, refused
    forged = hs256_by_hand({"exp": time.time() + 300, "publish": ["c"]}, pem.encode())
    assert await refusal(f"{a.ws}/ws/producer/c?token={forged}") == (401, "unauthorized")
    other = ec.generate_private_key(ec.SECP256R1())
    es = jwt.encode({"exp": time.time() + 300, "publish": ["c"]}, other, algorithm="ES256")
    assert await refusal(f"{a.ws}/ws/producer/c?token={es}") == (401, "unauthorized")


async def test_websockets_from_other_origins_are_refused(relay: RelayFactory) -> None:
    a = relay(allowed_origins="https://app.example").start()
    assert await refusal(f"{a.ws}/ws/consumer/c", origin="https://evil.example") == (403, "forbidden")
    async with consumer(f"{a.ws}/ws/consumer/c", origin="https://app.example"):
        pass
    async with consumer(f"{a.ws}/ws/consumer/c"):  # no Origin: not a browser
        pass


async def test_beyond_the_connection_limit_handshakes_get_503(relay: RelayFactory) -> None:
    a = relay(max_connections="3").start()
    async with (
        consumer(f"{a.ws}/ws/consumer/a"),
        consumer(f"{a.ws}/ws/consumer/b"),
        consumer(f"{a.ws}/ws/consumer/c"),
    ):
        assert await refusal(f"{a.ws}/ws/consumer/d") == (503, "unavailable")
        assert a.metric("relay_connections_refused_full_total") == 1
    async with consumer(f"{a.ws}/ws/consumer/d"):  # room again
        pass


async def test_a_flooding_producer_is_held_to_its_rate_and_others_do_not_notice(
    relay: RelayFactory, redis_client: redis.Redis, prefix: str
) -> None:
    a = relay(publish_rate="200", publish_burst="20").start()
    rss_before = a.rss_bytes()
    async with connect(f"{a.ws}/ws/producer/flood") as flood:
        replies: list[dict[str, Any]] = []

        async def flood_it() -> None:
            for n in range(3000):  # 15 s worth at the allowed rate, sent as fast as the socket takes
                await flood.send(json.dumps({"n": n, "pad": "x" * 200}))

        async def count_replies() -> None:
            while True:
                replies.append(await recv_json(flood, within=10))

        flood_started = time.monotonic()
        flooding = asyncio.create_task(flood_it())
        counting = asyncio.create_task(count_replies())
        # meanwhile another client publishes and consumes with its usual latency
        async with consumer(f"{a.ws}/ws/consumer/calm") as calm:
            for n in range(10):
                started = time.monotonic()
                ids = await publish_all(f"{a.ws}/ws/producer/calm", [n], within=5)
                assert [m["id"] for m in await recv_messages(calm, 1, within=5)] == ids
                assert time.monotonic() - started < 1.0
        flooding.cancel()
        counting.cancel()
        await asyncio.gather(flooding, counting, return_exceptions=True)
    kinds = [r.get("code", r["type"]) for r in replies]
    assert "rate_limited" in kinds
    assert "ack" in kinds
    stored = {entry_id for entry_id, _ in redis_client.xrange(f"{prefix}:{{flood}}")}
    assert {r["id"] for r in replies if r["type"] == "ack"} <= stored
    assert len(stored) <= 200 * (time.monotonic() - flood_started) + 20 + 10  # held to its rate
    assert a.metric("relay_rate_limited_total") >= 1
    assert a.rss_bytes() - rss_before < 50 * 1024 * 1024  # the flood was not buffered


async def test_tokens_never_reach_the_logs(secured: Instance) -> None:
    secret_token = token(publish=["*"], subscribe=["*"])
    async with consumer(f"{secured.ws}/ws/consumer/c?token={secret_token}"):
        pass
    await refusal(f"{secured.ws}/ws/consumer/c?token=garbage-{secret_token[:20]}")
    log = secured.log()
    assert secret_token not in log
    assert secret_token[:20] not in log
    assert "token=***" in log


async def test_an_idle_producer_is_closed_after_the_idle_timeout(relay: RelayFactory) -> None:
    a = relay(producer_idle_timeout="1").start()
    async with connect(f"{a.ws}/ws/producer/quiet") as producer:
        await producer.send("1")
        assert (await recv_json(producer))["type"] == "ack"
        started = time.monotonic()
        assert await close_code(producer, within=5) == 1000
        assert time.monotonic() - started > 0.9  # after the timeout, not at once
    assert a.metric("relay_idle_closes_total") == 1


def test_the_cli_carries_a_token(secured: Instance) -> None:
    import subprocess
    import sys

    from tests.conftest import base_env

    rights = token(publish=["tokened"], subscribe=["tokened"])

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", *args, "--url", secured.http],
            env={**base_env(), **env},
            capture_output=True,
            text=True,
            timeout=timeout(30),
        )

    assert run("publish", "tokened", "1").returncode == 2  # no token: refused
    stored = run("publish", "tokened", "1", RELAY_TOKEN=rights)
    assert stored.returncode == 0, stored.stderr
    tail = run("tail", "tokened", "--from", "0", "--count", "1", "--token", rights)
    assert json.loads(tail.stdout)["id"] == json.loads(stored.stdout)["id"]
    listed = run("channels", "--json", RELAY_TOKEN=rights)
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["tokened"]


async def test_joining_a_work_queue_needs_the_groups_claim(secured: Instance) -> None:
    watcher = token(subscribe=["jobs"])  # may watch the channel, not take its work
    assert await refusal(f"{secured.ws}/ws/consumer/jobs?group=workers&token={watcher}") == (403, "forbidden")
    worker = token(subscribe=["jobs"], groups=["workers"])
    async with connect(f"{secured.ws}/ws/consumer/jobs?group=workers&token={worker}") as ws:
        assert (await recv_json(ws))["group"] == "workers"
    assert await refusal(f"{secured.ws}/ws/consumer/jobs?group=others&token={worker}") == (403, "forbidden")


async def test_a_token_for_another_audience_is_refused_even_without_one_configured(
    relay: RelayFactory,
) -> None:
    a = relay(jwt_secret=SECRET).start()  # no RELAY_JWT_AUDIENCE
    meant_elsewhere = token(aud="some-other-service", publish=["*"])
    assert await refusal(f"{a.ws}/ws/producer/c?token={meant_elsewhere}") == (401, "unauthorized")
    plain = jwt.encode({"exp": time.time() + 300, "publish": ["*"]}, SECRET, algorithm="HS256")
    async with connect(f"{a.ws}/ws/producer/c?token={plain}") as producer:
        await producer.send("1")
        assert (await recv_json(producer))["type"] == "ack"


async def test_a_percent_encoded_token_parameter_is_redacted_too(secured: Instance) -> None:
    secret_token = token(subscribe=["*"])
    async with consumer(f"{secured.ws}/ws/consumer/c?%74oken={secret_token}"):  # accepted: it is ?token=
        pass
    assert secret_token not in secured.log()


async def test_the_connection_limit_holds_under_simultaneous_handshakes(relay: RelayFactory) -> None:
    a = relay(max_connections="3").start()

    async def attempt() -> bool:
        try:
            async with consumer(f"{a.ws}/ws/consumer/rush"):
                await held.wait()
                return True
        except InvalidStatus:
            return False

    held = asyncio.Event()
    attempts = [asyncio.create_task(attempt()) for _ in range(12)]
    async with asyncio.timeout(timeout(10)):
        while sum(t.done() for t in attempts) < 9:  # noqa: ASYNC110 - refusals have no event to wait on
            await asyncio.sleep(0.02)
    held.set()
    assert sum(await asyncio.gather(*attempts)) == 3


async def test_allowed_origins_compare_without_case(relay: RelayFactory) -> None:
    a = relay(allowed_origins="https://App.Example").start()
    async with consumer(f"{a.ws}/ws/consumer/c", origin="https://app.example"):
        pass
