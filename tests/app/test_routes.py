"""Handler tests: the whole app in-process on the embedded Redis (Starlette's TestClient)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from app import __version__
from app.protocol.frames import MAX_DEPTH
from app.server.app import create_app
from app.settings import Settings
from tests.support import timeout


@contextlib.contextmanager
def serving(**overrides: Any) -> Iterator[TestClient]:
    """The app on the embedded Redis, ready (test settings, with ``overrides``)."""
    values: dict[str, Any] = {"max_message_bytes": 256, "stream_maxlen": 50, **overrides}
    settings = Settings(_env_file=None, redis_url=None, **values)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + timeout(5)
        while client.get("/readyz").status_code != 200:  # Pub/Sub connects in the background
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.01)
        yield client


@pytest.fixture
def client() -> Iterator[TestClient]:
    with serving() as client:
        yield client


def metric(client: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "version": __version__}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_http_publish_then_history(client: TestClient) -> None:
    ids = [client.post("/channels/h/messages", content=json.dumps({"n": n})).json()["id"] for n in range(5)]
    history = client.get("/channels/h/messages").json()
    assert [m["id"] for m in history["messages"]] == ids
    assert history["messages"][0] == {"type": "message", "id": ids[0], "channel": "h", "data": {"n": 0}}
    page = client.get(f"/channels/h/messages?from={ids[1]}&limit=2").json()
    assert [m["data"]["n"] for m in page["messages"]] == [2, 3]
    assert page["next"] == ids[3]
    assert client.get(f"/channels/h/messages?from={page['next']}").json()["messages"][0]["id"] == ids[4]


def test_history_reports_what_retention_removed(client: TestClient) -> None:
    ids = [client.post("/channels/r/messages", content=str(n)).json()["id"] for n in range(80)]
    page = client.get(f"/channels/r/messages?from={ids[0]}&limit=1").json()
    assert page["gap"]["type"] == "gap"
    assert page["gap"]["from"] == ids[0]
    assert page["gap"]["next"] == page["messages"][0]["id"]
    assert "gap" not in client.get("/channels/r/messages?from=0&limit=1").json()


def test_idempotency_key_answers_a_repeat_with_the_first_id(client: TestClient) -> None:
    first = client.post("/channels/pay/messages", content='{"amount":5}', headers={"Idempotency-Key": "k-1"})
    again = client.post("/channels/pay/messages", content='{"amount":5}', headers={"Idempotency-Key": "k-1"})
    other = client.post("/channels/pay/messages", content='{"amount":5}', headers={"Idempotency-Key": "k-2"})
    assert first.status_code == again.status_code == other.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert other.json() != first.json()
    assert len(client.get("/channels/pay/messages").json()["messages"]) == 2


def test_channel_listing(client: TestClient) -> None:
    client.post("/channels/list-b/messages", content="1")
    client.post("/channels/list-a/messages", content="1")
    client.post("/channels/list-a/messages", content="2")
    listed = {c["name"]: c for c in client.get("/channels").json()["channels"]}
    assert listed["list-a"]["length"] == 2
    assert listed["list-b"]["length"] == 1
    assert listed["list-a"]["last_id"] == client.get("/channels/list-a/messages").json()["next"]


def test_producer_and_consumer_over_websockets(client: TestClient) -> None:
    with client.websocket_connect("/ws/consumer/live") as consumer:
        assert consumer.receive_json() == {"type": "subscribed", "channel": "live", "id": "0-0"}
        with client.websocket_connect("/ws/producer/live") as producer:
            producer.send_text('{"hello":"there"}')
            ack = producer.receive_json()
            producer.send_text("nope")
            assert producer.receive_json()["code"] == "invalid_json"
            producer.send_bytes(b"{}")
            assert producer.receive_json()["code"] == "binary_frame"
        assert consumer.receive_json() == {
            "type": "message",
            "id": ack["id"],
            "channel": "live",
            "data": {"hello": "there"},
        }


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/ws/consumer/bad!name", 400, "invalid_channel"),
        ("/ws/producer/-x", 400, "invalid_channel"),
        ("/ws/consumer/ok?from=yesterday", 400, "invalid_id"),
        ("/ws/consumer/jobs?group=bad%20name", 400, "invalid_request"),
        ("/ws/consumer/jobs?group=w&prefetch=0", 400, "invalid_request"),
        ("/ws/consumer/jobs?group=w&prefetch=1001", 400, "invalid_request"),
    ],
)
def test_refused_handshakes_answer_with_json(client: TestClient, path: str, status: int, code: str) -> None:
    with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect(path):
        pass
    assert refused.value.status_code == status
    assert refused.value.json()["code"] == code


def test_http_errors_share_the_error_shape(client: TestClient) -> None:
    too_big = client.post("/channels/c/messages", content=json.dumps("x" * 300))
    assert (too_big.status_code, too_big.json()["code"]) == (413, "too_large")
    bad_limit = client.get("/channels/c/messages?limit=5000")
    assert (bad_limit.status_code, bad_limit.json()["type"], bad_limit.json()["code"]) == (
        400,
        "error",
        "invalid_request",
    )
    assert client.get("/channels/c/messages?from=$").json()["code"] == "invalid_id"


def test_metrics_move_when_messages_flow(client: TestClient) -> None:
    published = metric(client, "relay_messages_published_total")
    delivered = metric(client, "relay_messages_delivered_total")
    errors = metric(client, "relay_errors_total", code="invalid_json")
    with client.websocket_connect("/ws/consumer/m") as consumer:
        consumer.receive_json()
        assert metric(client, "relay_connections", role="consumer") >= 1
        client.post("/channels/m/messages", content="1")
        consumer.receive_json()
    client.post("/channels/m/messages", content="{")
    assert metric(client, "relay_messages_published_total") == published + 1
    assert metric(client, "relay_messages_delivered_total") >= delivered + 1
    assert metric(client, "relay_errors_total", code="invalid_json") == errors + 1


def test_a_group_member_gets_each_message_once_and_acks(client: TestClient) -> None:
    with client.websocket_connect("/ws/consumer/jobs?group=workers&prefetch=2") as member:
        assert member.receive_json() == {"type": "subscribed", "channel": "jobs", "group": "workers"}
        ids = [client.post("/channels/jobs/messages", content=str(n)).json()["id"] for n in range(3)]
        first, second = member.receive_json(), member.receive_json()
        assert [(first["id"], first["data"], first["delivery"]), (second["id"], second["delivery"])] == [
            (ids[0], 0, 1),
            (ids[1], 1),
        ]
        member.send_json({"type": "ack", "id": "1-0"})
        assert member.receive_json()["code"] == "unknown_id"
        member.send_text("not json")
        assert member.receive_json()["code"] == "invalid_json"
        member.send_json({"type": "ack", "id": ids[0]})  # room for the third
        assert member.receive_json()["id"] == ids[2]


def test_a_member_cannot_ack_what_another_member_holds(client: TestClient) -> None:
    with (
        client.websocket_connect("/ws/consumer/shared?group=g&prefetch=1") as one,
        client.websocket_connect("/ws/consumer/shared?group=g&prefetch=1") as two,
    ):
        one.receive_json(), two.receive_json()
        client.post("/channels/shared/messages", content='"a"')
        client.post("/channels/shared/messages", content='"b"')
        held_by_one, held_by_two = one.receive_json()["id"], two.receive_json()["id"]
        one.send_json({"type": "ack", "id": held_by_two})
        assert one.receive_json()["code"] == "unknown_id"  # and two still holds it:
        two.send_json({"type": "ack", "id": held_by_two})
        one.send_json({"type": "ack", "id": held_by_one})
        client.post("/channels/shared/messages", content='"c"')
        client.post("/channels/shared/messages", content='"d"')
        # both acks counted: each member has room for exactly one of the next two
        assert {one.receive_json()["data"], two.receive_json()["data"]} == {"c", "d"}


def test_latency_and_group_metrics_move(client: TestClient) -> None:
    fanouts = metric(client, "relay_fanout_latency_seconds_count")
    publishes = metric(client, "relay_redis_command_seconds_count", operation="publish")
    acked = metric(client, "relay_messages_acked_total")
    with (
        client.websocket_connect("/ws/consumer/measured") as fan,
        client.websocket_connect("/ws/consumer/measured?group=g&prefetch=5") as member,
    ):
        fan.receive_json(), member.receive_json()
        client.post("/channels/measured/messages", content="1")
        fan.receive_json()
        delivered = member.receive_json()
        assert metric(client, "relay_group_held_messages") == 1
        member.send_json({"type": "ack", "id": delivered["id"]})
        client.post("/channels/measured/messages", content="2")  # its delivery follows the ack's batch
        member.receive_json()
    assert metric(client, "relay_fanout_latency_seconds_count") >= fanouts + 1
    assert metric(client, "relay_redis_command_seconds_count", operation="publish") >= publishes + 2
    assert metric(client, "relay_messages_acked_total") == acked + 1


# -- the edges of a connection: nesting, floods, paths, empty parameters ------------------------


def test_a_message_nested_at_the_limit_goes_through_and_one_level_more_is_refused() -> None:
    deepest = "[" * MAX_DEPTH + '"x"' + "]" * MAX_DEPTH
    too_deep = "[" + deepest + "]"
    with serving(max_message_bytes=1024) as client, client.websocket_connect("/ws/consumer/deep") as consumer:
        consumer.receive_json()
        with client.websocket_connect("/ws/producer/deep") as producer:
            producer.send_text(too_deep)
            refused = producer.receive_json()
            producer.send_text(deepest)
            ack = producer.receive_json()
        posted = client.post("/channels/deep/messages", content=too_deep)
        # frames are read with Python's own json, as app.client reads them
        assert consumer.receive_json()["data"] == json.loads(deepest)
        page = client.get("/channels/deep/messages").json()  # the deepest body the relay sends: data + 3
    assert [(m["id"], m["data"]) for m in page["messages"]] == [(ack["id"], json.loads(deepest))]
    assert (refused["type"], refused["code"]) == ("error", "invalid_json")
    assert f"at most {MAX_DEPTH} deep" in refused["detail"]
    assert (posted.status_code, posted.json()["code"]) == (400, "invalid_json")
    assert f"at most {MAX_DEPTH} deep" in posted.json()["detail"]


def test_a_producer_sending_more_than_32_bad_frames_in_10_s_is_closed_with_1008(client: TestClient) -> None:
    with client.websocket_connect("/ws/producer/flood") as producer:
        producer.send_text("1")
        for n in range(32):
            if n % 2:
                producer.send_bytes(b"{}")
            else:
                producer.send_text("{not json")
            if n == 15:
                producer.send_text("2")
        producer.send_text("nope")  # the 33rd
        replies = [producer.receive_json() for _ in range(34)]
        with pytest.raises(WebSocketDisconnect) as closed:
            producer.receive_json()
    kinds = [r.get("code", r["type"]) for r in replies]
    assert (
        kinds
        == ["ack"] + ["invalid_json", "binary_frame"] * 8 + ["ack"] + ["invalid_json", "binary_frame"] * 8
    )
    assert closed.value.code == 1008
    assert len(client.get("/channels/flood/messages").json()["messages"]) == 2


def test_rate_limited_frames_are_not_bad_frames() -> None:
    with (
        serving(publish_rate=100, publish_burst=1) as client,
        client.websocket_connect("/ws/producer/rl") as producer,
    ):
        for n in range(80):  # over the rate, every other one: about 40 refused in 0.4 s
            producer.send_text(str(n))
        replies = [producer.receive_json() for _ in range(80)]
        producer.send_text("80")
        assert producer.receive_json()["type"] in ("ack", "error")  # still open
    assert sum(r.get("code") == "rate_limited" for r in replies) > 32


@pytest.mark.parametrize("kind", ["consumer", "producer"])
@pytest.mark.parametrize("rest", ["a%2Fb", "..%2F", "%2E%2E", "a%2Fb/c", "..%2F..%2Fx", "ok/", ""])
def test_slashes_and_dot_segments_in_a_channel_path_are_invalid_channels(
    client: TestClient, kind: str, rest: str
) -> None:
    with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect(f"/ws/{kind}/{rest}"):
        pass
    assert refused.value.status_code == 400
    assert refused.value.json()["code"] == "invalid_channel"


@pytest.mark.parametrize("channel", ["a%2Fb", "..%2F", "a%2Fb%2Fc"])
def test_slashes_and_dot_segments_in_an_http_channel_are_invalid_channels(
    client: TestClient, channel: str
) -> None:
    for response in (
        client.post(f"/channels/{channel}/messages", content="1"),
        client.get(f"/channels/{channel}/messages"),
    ):
        assert (response.status_code, response.json()["code"]) == (400, "invalid_channel"), response.text


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/channels/c/messages?from=", "invalid_id"),
        ("/channels/c/messages?limit=", "invalid_request"),
        ("/channels?limit=", "invalid_request"),
    ],
)
def test_an_empty_parameter_is_refused_over_http(client: TestClient, path: str, code: str) -> None:
    client.post("/channels/c/messages", content="1")
    response = client.get(path)
    assert (response.status_code, response.json()["type"], response.json()["code"]) == (400, "error", code)


@pytest.mark.parametrize(
    ("query", "code"),
    [("from=", "invalid_id"), ("group=", "invalid_request"), ("group=g&prefetch=", "invalid_request")],
)
def test_an_empty_parameter_is_refused_before_the_upgrade(client: TestClient, query: str, code: str) -> None:
    with (
        pytest.raises(WebSocketDenialResponse) as refused,
        client.websocket_connect(f"/ws/consumer/c?{query}"),
    ):
        pass
    assert (refused.value.status_code, refused.value.json()["code"]) == (400, code)


def test_the_console_page_runs_only_its_own_scripts_and_never_in_a_frame(client: TestClient) -> None:
    page = client.get("/console")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert "access-control-allow-origin" not in page.headers
    slash = client.get("/console/", follow_redirects=False)
    assert (slash.status_code, slash.headers["location"]) == (308, "/console")
    assert client.get("/console/console.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/console/other.js").status_code == 404


def test_the_client_module_answers_head_and_conditional_requests(client: TestClient) -> None:
    module = client.get("/client/relay.js")
    assert module.headers["content-type"].startswith("text/javascript")
    head = client.head("/client/relay.js")
    assert head.status_code == 200
    assert head.headers["etag"] == module.headers["etag"]
    assert head.headers["access-control-allow-origin"] == "*"
    again = client.get("/client/relay.js", headers={"If-None-Match": module.headers["etag"]})
    assert (again.status_code, again.content) == (304, b"")
