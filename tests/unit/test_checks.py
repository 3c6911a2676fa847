"""What a message must pass: exactly one JSON value, nested at most MAX_DEPTH deep."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ingest.checks import JSON_RULE, json_refusal
from app.protocol import frames
from app.protocol.frames import MAX_DEPTH


def depth(value: Any) -> int:
    """How deep arrays and objects nest in a parsed value (without recursion: any depth)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in item)
    return deepest


def reference(text: str) -> bool:
    """Whether ``text`` is a message, the slow and obvious way."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return depth(value) <= MAX_DEPTH


def nested(levels: int, rng: random.Random) -> Any:
    """A value ``levels`` deep, arrays and objects mixed, with siblings, brackets in strings and
    escapes along the way (so that the text is long and full of brackets, as a flood would be)."""
    value: Any = rng.choice([1, "x", None, '"]}', "a\\b"])
    for _ in range(levels):
        siblings: list[Any] = [rng.choice([[], {}, "[[{", "}]", 2.5, [[1]]]) for _ in range(rng.randrange(3))]
        if rng.random() < 0.5:
            value = [*siblings, value] if rng.random() < 0.5 else [value, *siblings]
        else:
            value = {**{f"k{i}]": s for i, s in enumerate(siblings)}, "v": value}
    return value


@pytest.mark.parametrize("levels", [0, 1, 2, MAX_DEPTH - 1, MAX_DEPTH])
@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_a_message_nested_up_to_the_limit_is_accepted(levels: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    assert json_refusal(opener * levels + "1" + closer * levels) is None
    assert json_refusal(f' {opener * levels}"{"[" * 300}"{closer * levels} ') is None  # brackets in a string


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, MAX_DEPTH + 2, 1000, 1024, 1025, 5000])
@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_a_message_nested_deeper_is_refused_naming_the_limit(levels: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    refusal = json_refusal(opener * levels + "1" + closer * levels)
    assert refusal is not None
    assert refusal.startswith(JSON_RULE)
    assert f"at most {MAX_DEPTH} deep" in refusal


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "1 2",
        '{"a":1} trailing',
        "NaN",
        # no JSON value, though each parses once put inside the check's padding of arrays
        "1]," + ",".join(["[]"] * 200) + ",[2",
        "[1]]," + ",".join(["[[]]"] * 70) + ",[[2]",
    ],
)
def test_what_is_not_one_json_value_is_refused_with_the_parser_s_reason(text: str) -> None:
    refusal = json_refusal(text)
    assert refusal is not None
    assert refusal.startswith(f"{JSON_RULE}: ")
    assert "nests deeper" not in refusal


def test_orjson_takes_1024_levels_and_no_more() -> None:
    """The check leans on orjson's own limit (its documentation says 1024): pinned here."""
    orjson.loads("[" * 1024 + "]" * 1024)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads("[" * 1025 + "]" * 1025)


@pytest.mark.parametrize("seed", range(40))
def test_the_check_agrees_with_the_obvious_one_around_the_limit(seed: int) -> None:
    rng = random.Random(seed)
    value = nested(rng.randrange(MAX_DEPTH - 8, MAX_DEPTH + 8), rng)
    text = json.dumps(value)
    assert (json_refusal(text) is None) == (depth(value) <= MAX_DEPTH), text[:200]
    cut = text[: rng.randrange(len(text))]  # and a message cut short is no JSON at all
    assert json_refusal(cut) is not None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='[]{},:"1 \\an', max_size=700))
def test_any_text_is_accepted_exactly_when_it_is_a_message(text: str) -> None:
    assert (json_refusal(text) is None) == reference(text)


def test_a_frame_at_the_limit_parses_with_python_s_own_json() -> None:
    """The Python client (app.client) reads frames with the standard library (HTTP history, three
    levels around the data, is in tests/app/test_routes.py)."""
    half = MAX_DEPTH // 2
    data = "[" * half + '{"a":' * (MAX_DEPTH - half) + "1" + "}" * (MAX_DEPTH - half) + "]" * half
    assert json_refusal(data) is None
    assert json.loads(frames.message("1-0", "c", data))["data"] == json.loads(data)
