"""Frames the relay writes to transports itself must be the frames websockets would build."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from app.wire import Outgoing, text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_matches_the_websockets_serialisation(size: int) -> None:
    payload = ("é" * size).encode()[:size]
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame(payload) == expected


def test_outgoing_carries_the_same_text_both_ways() -> None:
    out = Outgoing('{"type":"message","data":"é"}')
    assert out.asgi == {"type": "websocket.send", "text": '{"type":"message","data":"é"}'}
    assert out.raw == text_frame('{"type":"message","data":"é"}'.encode())
