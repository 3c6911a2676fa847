"""Property-based: whatever frames a client sends on ``WS /ws``, each gets exactly one reply that
repeats its ref, or the connection closes with the code that says why (1009: a frame too big to be
a message; 1008: the 33rd refusal within 10 s).

In-process (Starlette's TestClient) on the embedded Redis, one app for the module. Frames go one at
a time: the next reply read (``message``, ``gap``, ``join`` and ``leave`` frames aside) is the
answer to the frame just sent. The subscriptions the replies imply are tracked, so each reply must
also agree with them, and no frame of a channel arrives while it is not subscribed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient, WebSocketTestSession
from starlette.types import Message

from app.protocol.codes import ErrorCode
from app.server.app import create_app
from app.server.routes.multiplex import ENVELOPE, MAX_REF
from app.settings import Settings
from tests.support import timeout

MAX_BYTES: Final = 256
MAX_SUBSCRIPTIONS: Final = 2
FLOOD: Final = 32  # refusals a connection may have within 10 s; the next closes it
CODES: Final = {code.value for code in ErrorCode}
EVENTS: Final = frozenset({"message", "gap", "join", "leave"})
SUCCESS: Final = {
    "subscribe": "subscribed",
    "unsubscribe": "unsubscribed",
    "publish": "ack",
    "presence": "presence",
    "refresh": "refreshed",
}
NOT_REFUSALS: Final = {ErrorCode.UNAVAILABLE.value, ErrorCode.RATE_LIMITED.value}  # not the client's doing
MODEST = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    values: dict[str, Any] = {
        "max_message_bytes": MAX_BYTES,
        "max_subscriptions": MAX_SUBSCRIPTIONS,
        "stream_maxlen": 20,  # a subscription from 0 catches up a few messages, not thousands
    }
    app_settings = Settings(_env_file=None, redis_url=None, **values)  # type: ignore[call-arg]
    with TestClient(create_app(app_settings), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + timeout(5)
        while client.get("/readyz").status_code != 200:  # Pub/Sub connects in the background
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.01)
        yield client


# -- what a client may send ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
not_objects = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.lists(json_values, max_size=3)
)
good_refs = st.integers(-3, 3) | st.text(max_size=4)
refs = st.one_of(
    good_refs,
    st.sampled_from(["r" * MAX_REF, "r" * (MAX_REF + 1), 2**53 - 1, 2**53, True, 1.5]),
    st.lists(st.integers(), max_size=1),
)
good_channels = st.sampled_from(["a", "b", "c:1", "d"])  # more than a connection may follow
channels = good_channels | st.sampled_from(["bad name", "", "-x"]) | st.integers(0, 2)
positions = st.sampled_from(["$", "0", "0-0", "1-0"])
sized = st.sampled_from(["x" * MAX_BYTES, "x" * (MAX_BYTES + ENVELOPE)])  # too_large; closes with 1009
data = st.one_of(json_values, json_values, json_values, sized)


def well_formed(kind: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Frames of ``kind`` as a client means them: mostly accepted, unless the state says no."""
    required = {"type": st.just(kind), **{k: v for k, v in fields.items() if not k.startswith("_")}}
    optional = {k[1:]: v for k, v in fields.items() if k.startswith("_")}
    return st.fixed_dictionaries(required, optional={"ref": good_refs, **optional})


subscribes = well_formed("subscribe", channel=good_channels, _from=positions, _presence=st.booleans())
good_frames = st.one_of(
    subscribes,
    subscribes,
    well_formed("unsubscribe", channel=good_channels),
    well_formed("publish", channel=good_channels, data=data, _key=st.sampled_from(["k1", "k2"])),
    well_formed("presence", channel=good_channels),
    well_formed("refresh", token=st.just("any.token.will-do")),  # no key configured: every token does
)
any_objects = st.fixed_dictionaries(  # anything in any field
    {},
    optional={
        "type": st.sampled_from([*SUCCESS, "nope", ""]) | st.none() | st.integers(0, 1),
        "ref": refs,
        "channel": channels,
        "from": positions | st.sampled_from(["junk", "-1"]) | st.integers(0, 1),
        "presence": st.booleans() | st.just("yes"),
        "data": data,
        "key": st.sampled_from(["k1", "", "not a key"]) | st.integers(0, 1),
        "token": st.text(max_size=6) | st.integers(0, 1),
    },
)
frames = st.one_of(
    good_frames.map(json.dumps),
    good_frames.map(json.dumps),
    good_frames.map(json.dumps),
    any_objects.map(json.dumps),
    st.text(max_size=20),  # mostly not JSON
    not_objects.map(json.dumps),
    st.binary(max_size=8),
)
every_channel = st.permutations(["a", "b", "c:1", "d"]).map(
    lambda names: [json.dumps({"type": "subscribe", "channel": name}) for name in names]
)  # over RELAY_MAX_SUBSCRIPTIONS at once, which random frames seldom are
runs = st.lists(
    st.one_of(*[frames.map(lambda frame: [frame])] * 6, every_channel), min_size=1, max_size=12
).map(lambda parts: [frame for part in parts for frame in part])


# -- what the relay must answer ------------------------------------------------------------------


def receive(ws: WebSocketTestSession, within: float = 5) -> Message:
    """``ws.receive()``, bounded (TestClient's own waits for ever): what it awaits, under a deadline."""

    async def bounded() -> Message:
        with anyio.fail_after(timeout(within)):
            return await ws._send_rx.receive()

    return ws.portal.call(bounded)


def parsed(frame: str | bytes) -> dict[str, Any] | None:
    """The frame as the relay reads it: a JSON object, or None (refused as invalid_frame)."""
    if isinstance(frame, bytes):
        return None
    try:
        value = json.loads(frame, parse_constant=_not_json)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON (RFC 8259)")  # Python's extension; the relay refuses it


def valid_ref(ref: Any) -> bool:
    """A ref the reply must repeat (None: the frame has none, which is fine too)."""
    if isinstance(ref, str):
        return len(ref) <= MAX_REF
    return isinstance(ref, int) and not isinstance(ref, bool) and -(2**53) < ref < 2**53


def kind(frame: dict[str, Any]) -> str | None:
    """The frame's type when it is one the relay knows."""
    value = frame.get("type")
    return value if isinstance(value, str) and value in SUCCESS else None


def surely_refused(frame: dict[str, Any] | None) -> bool:
    """Refused whatever the connection's state: not an object, a bad ref, an unknown type."""
    if frame is None or kind(frame) is None:
        return True
    return frame.get("ref") is not None and not valid_ref(frame["ref"])


@dataclass
class Session:
    """What the replies so far say about the connection."""

    subscribed: set[str] = field(default_factory=set)
    refusals: int = 0

    def event(self, event: dict[str, Any]) -> None:
        assert event.get("channel") in self.subscribed, f"a frame of a channel not subscribed: {event}"

    def answered(self, frame: dict[str, Any] | None, reply: dict[str, Any]) -> None:
        if frame is not None and valid_ref(frame.get("ref")):
            assert reply.get("ref") == frame["ref"], (frame, reply)
        else:
            assert "ref" not in reply, (frame, reply)
        if surely_refused(frame):
            assert reply["type"] == "error", (frame, reply)
            assert reply["code"] == "invalid_frame", (frame, reply)
        success = SUCCESS.get(kind(frame) or "", "error") if frame is not None else "error"
        assert reply["type"] in ("error", success), (frame, reply)
        if reply["type"] == "error":
            self._refused(reply)
        else:
            assert frame is not None
            self._done(frame, reply)

    def _refused(self, reply: dict[str, Any]) -> None:
        assert reply["code"] in CODES, reply
        assert reply["detail"], reply
        if reply["code"] not in NOT_REFUSALS:
            self.refusals += 1
        channel = reply.get("channel")
        if reply["code"] == "already_subscribed":
            assert channel in self.subscribed, reply
        elif reply["code"] == "not_subscribed":
            assert channel not in self.subscribed, reply
        elif reply["code"] == "too_many_subscriptions":
            assert len(self.subscribed) == MAX_SUBSCRIPTIONS, (self.subscribed, reply)

    def _done(self, frame: dict[str, Any], reply: dict[str, Any]) -> None:
        if reply["type"] != "refreshed":
            assert reply["channel"] == frame["channel"], (frame, reply)
        if reply["type"] == "subscribed":
            assert frame["channel"] not in self.subscribed, (self.subscribed, reply)
            assert len(self.subscribed) < MAX_SUBSCRIPTIONS, (self.subscribed, reply)
            assert isinstance(reply["id"], str), reply
            assert reply["id"], reply
            self.subscribed.add(frame["channel"])
        elif reply["type"] == "unsubscribed":
            self.subscribed.remove(frame["channel"])  # KeyError: it was not subscribed
        elif reply["type"] == "ack":
            assert isinstance(reply["id"], str), reply
            assert "-" in reply["id"], reply


def next_reply(ws: WebSocketTestSession, session: Session) -> dict[str, Any] | int:
    """The next frame that is no channel frame, or the close code if the relay closed."""
    while True:
        message = receive(ws)
        if message["type"] == "websocket.close":
            return int(message.get("code", 1000))
        text = message.get("text")
        assert isinstance(text, str), message
        frame = json.loads(text)
        if frame["type"] not in EVENTS:
            return dict(frame)
        session.event(frame)


def send(ws: WebSocketTestSession, frame: str | bytes) -> None:
    if isinstance(frame, bytes):
        ws.send_bytes(frame)
    else:
        ws.send_text(frame)


def play(ws: WebSocketTestSession, sent: list[str | bytes]) -> None:
    """Send the frames one at a time and check each answer; return once the relay closes."""
    session = Session()
    for frame in sent:
        send(ws, frame)
        answer = next_reply(ws, session)
        if isinstance(frame, str) and len(frame.encode()) > MAX_BYTES + ENVELOPE:
            assert answer == 1009, (frame[:80], answer)
            return
        if isinstance(answer, int):
            assert answer == 1008, (answer, session, frame)
            assert session.refusals == FLOOD, (answer, session, frame)
            return
        assert not (session.refusals == FLOOD and surely_refused(parsed(frame))), (
            "the 33rd refusal was answered"
        )
        session.answered(parsed(frame), answer)


@MODEST
@given(sent=runs, flood=st.booleans())
def test_every_frame_gets_one_reply_with_its_ref_or_a_close_that_says_why(
    client: TestClient, sent: list[str | bytes], flood: bool
) -> None:
    if flood:
        sent = [*sent, *["not json"] * (FLOOD + 1)]
    with client.websocket_connect("/ws") as ws:
        first = json.loads(receive(ws)["text"])
        assert first["type"] == "connected", first
        assert first["client"], first
        play(ws, sent)
