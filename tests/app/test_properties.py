"""Property-based: whatever a client sends, the relay answers as the contract says, never with a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient, WebSocketDenialResponse

from app.protocol.codes import ErrorCode
from app.server.app import create_app
from app.settings import Settings

CODES = {code.value for code in ErrorCode}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app_settings = Settings(_env_file=None, redis_url=None, max_message_bytes=4096)  # type: ignore[call-arg]
    with TestClient(create_app(app_settings), raise_server_exceptions=False) as client:
        yield client


def error_shape(body: dict[str, object]) -> bool:
    return body.get("type") == "error" and body.get("code") in CODES and bool(body.get("detail"))


@FAST
@given(name=st.text(max_size=200))
def test_any_channel_name_gets_a_clear_answer_over_http(client: TestClient, name: str) -> None:
    response = client.post(f"/channels/{quote(name, safe='')}/messages", content="1")
    assert response.status_code in (201, 400, 404, 405), response.text
    if response.status_code == 400:
        assert error_shape(response.json())
    history = client.get(f"/channels/{quote(name, safe='')}/messages")
    assert history.status_code in (200, 400, 404, 405)


@FAST
@given(position=st.text(max_size=60), limit=st.text(max_size=8))
def test_any_history_query_gets_a_clear_answer(client: TestClient, position: str, limit: str) -> None:
    client.post("/channels/props/messages", content="1")
    response = client.get(f"/channels/props/messages?{urlencode({'from': position, 'limit': limit})}")
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert error_shape(response.json())


@FAST
@given(frames=st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), min_size=1, max_size=8))
def test_every_producer_frame_gets_exactly_one_reply_in_order(
    client: TestClient, frames: list[str | bytes]
) -> None:
    with client.websocket_connect("/ws/producer/props") as ws:
        for frame in frames:
            if isinstance(frame, bytes):
                ws.send_bytes(frame)
            else:
                ws.send_text(frame)
        replies = [ws.receive_json() for _ in frames]
    for frame, reply in zip(frames, replies, strict=True):
        if isinstance(frame, bytes):
            assert reply["code"] == "binary_frame"
            continue
        try:
            json.loads(frame, parse_constant=_not_json)  # NaN, Infinity: Python's extension, not JSON
            valid = True
        except ValueError:
            valid = False
        assert reply["type"] == ("ack" if valid else "error"), (frame, reply)
        if not valid:
            assert error_shape(reply)


@FAST
@given(
    params=st.dictionaries(
        st.sampled_from(["from", "group", "prefetch", "token", "x"]), st.text(max_size=40), max_size=4
    )
)
def test_any_consumer_query_is_accepted_or_refused_cleanly(
    client: TestClient, params: dict[str, str]
) -> None:
    outcome, answer = handshake(client, f"/ws/consumer/props?{urlencode(params)}")
    if outcome == "accepted":
        assert answer["type"] == "subscribed"
    else:
        assert answer["status"] in (400, 503)
        assert error_shape(answer)


def handshake(client: TestClient, url: str) -> tuple[str, dict[str, object]]:
    """("accepted", first frame) or ("refused", error body with its "status")."""
    try:
        with client.websocket_connect(url) as ws:
            return "accepted", ws.receive_json()
    except WebSocketDenialResponse as refused:
        return "refused", {**refused.json(), "status": refused.status_code}


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON (RFC 8259)")
