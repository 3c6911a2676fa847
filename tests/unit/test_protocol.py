from __future__ import annotations

import json

import pytest

from app.errors import InvalidChannel, InvalidPosition, InvalidRequest
from app.protocol import frames, names, streamid
from app.protocol.codes import ErrorCode

VALID = ["a", "Z", "0", "orders", "chat:room-1", "user.42_x", "a" * 128, "A-b_c.d:e"]
INVALID = ["", "-a", "_a", ".a", ":a", "a b", "é", "a/b", "a{b}", "a" * 129, "a\n", "a*"]


@pytest.mark.parametrize("name", VALID)
def test_valid_channel_names(name: str) -> None:
    assert names.check_channel(name) == name


@pytest.mark.parametrize("name", INVALID)
def test_invalid_channel_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(InvalidChannel) as refused:
        names.check_channel(name)
    assert names.CHANNEL_PATTERN in refused.value.detail
    assert refused.value.code == "invalid_channel"


def test_positions() -> None:
    assert names.parse_position(None).latest
    assert names.parse_position("$").latest
    origin = names.parse_position("0")
    assert (origin.after, origin.latest, origin.report_gap, origin.text) == ((0, 0), False, False, "0-0")
    zero = names.parse_position("0-0")
    assert (zero.after, zero.report_gap) == ((0, 0), True)  # a real cursor: its losses are reported
    assert names.parse_position("1732540000000-7").after == (1732540000000, 7)
    assert names.parse_position("18446744073709551615-18446744073709551615").after == (
        2**64 - 1,
        2**64 - 1,
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "1",
        "1-",
        "-1",
        "1-2-3",
        "1.5-0",
        " 1-0",
        "18446744073709551616-0",
        "0x10-0",
        "\u0661-\u0662",
    ],
)
def test_invalid_positions(text: str) -> None:
    with pytest.raises(InvalidPosition) as refused:
        names.parse_position(text)
    assert refused.value.code == "invalid_id"


def test_stream_ids_compare_numerically() -> None:
    assert streamid.parse("10-0") > streamid.parse("9-99")
    assert streamid.parse("5-10") > streamid.parse("5-9")
    assert streamid.format_id(streamid.parse("1732540000000-3")) == "1732540000000-3"


def test_frames_are_the_contract_json() -> None:
    data = json.dumps({"nested": [1, "two", None], "unicode": "é✓"}, ensure_ascii=False)
    assert json.loads(frames.message("1-0", "c", data)) == {
        "type": "message",
        "id": "1-0",
        "channel": "c",
        "data": {"nested": [1, "two", None], "unicode": "é✓"},
    }
    assert json.loads(frames.subscribed("c", "0-0")) == {
        "type": "subscribed",
        "channel": "c",
        "id": "0-0",
    }
    assert json.loads(frames.gap("c", "1-0", "5-0")) == {
        "type": "gap",
        "channel": "c",
        "from": "1-0",
        "next": "5-0",
    }
    assert json.loads(frames.ack("7-1")) == {"type": "ack", "id": "7-1"}
    error = json.loads(frames.error(ErrorCode.INVALID_JSON, 'bad "quote"\n'))
    assert error == {"type": "error", "code": "invalid_json", "detail": 'bad "quote"\n'}


# the last three are not ASCII digits: str.isdigit() says yes, and int() takes the last two
@pytest.mark.parametrize("text", ["0", "1001", "-1", "1.5", "", "ten", "\u00b9", "\u0663", "\uff11"])
def test_a_prefetch_that_is_not_a_plain_number_in_range_is_refused_as_a_bad_request(text: str) -> None:
    with pytest.raises(InvalidRequest, match="expected a whole number from 1 to 1000"):
        names.parse_prefetch(text, 10)
    assert names.parse_prefetch("1000", 10) == 1000
    assert names.parse_prefetch(None, 10) == 10
