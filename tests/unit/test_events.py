"""The Server-Sent Event form of the relay's frames (app.protocol.events)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.fanout.sink import Frame
from app.protocol import events, frames


def parse(event: bytes) -> dict[str, str]:
    """An event's fields, as an EventSource reads them (one line each)."""
    text = event.decode()
    assert text.endswith("\n\n")
    fields: dict[str, str] = {}
    for line in text[:-2].split("\n"):
        name, _, value = line.partition(": ")
        assert name not in fields, f"{name} twice: a line break got into the event"
        fields[name] = value
    return fields


def test_a_message_is_its_id_and_the_data_on_one_line() -> None:
    event = events.of_frame(frames.message("17-3", "orders", '{"a": [1,\r\n 2],\n"b": "x\\ny"}'))
    fields = parse(event)
    assert fields.keys() == {"event", "id", "data"}
    assert fields["event"] == "message"
    assert fields["id"] == "17-3"
    assert json.loads(fields["data"]) == {"a": [1, 2], "b": "x\ny"}


def test_a_gap_has_no_id() -> None:
    fields = parse(events.of_frame(frames.gap("orders", "1-0", "9-0")))
    assert fields == {"event": "gap", "data": '{"from":"1-0","next":"9-0"}'}


def test_only_messages_and_gaps_are_events() -> None:
    with pytest.raises(ValueError, match="expected a message or gap frame"):
        events.of_frame(frames.subscribed("orders", "0-0"))


@given(
    st.recursive(
        st.none() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    )
)
def test_any_json_the_relay_accepts_reads_back_the_same(value: object) -> None:
    for text in (json.dumps(value), json.dumps(value, indent=2)):
        fields = parse(events.of_frame(frames.message("1-0", "c", text)))
        assert json.loads(fields["data"]) == value


def test_a_frame_makes_its_event_once_as_a_chunk() -> None:
    frame = Frame(frames.message("5-0", "c", "[1]"))
    chunk = frame.event
    assert frame.event is chunk  # the same bytes for every stream
    assert chunk == b"%x\r\n%s\r\n" % (len(events.unchunk(chunk)), events.unchunk(chunk))
    assert events.unchunk(chunk) == b"event: message\nid: 5-0\ndata: [1]\n\n"
