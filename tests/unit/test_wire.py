"""Frames the relay writes to transports itself must be the frames websockets would build."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from websockets import frames as ws_frames

from app.fanout.sink import Frame, encode
from app.server.wire import Wire


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_matches_the_websockets_serialisation(size: int) -> None:
    payload = ("é" * size).encode()[:size]
    expected = ws_frames.Frame(ws_frames.Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert encode(payload) == expected


def test_a_frame_carries_its_text_and_the_same_text_as_bytes_on_the_wire() -> None:
    frame = Frame('{"type":"message","data":"é"}')
    assert frame.text == '{"type":"message","data":"é"}'
    assert frame.data == encode('{"type":"message","data":"é"}'.encode())


class ClosedTransport:
    def __init__(self, closing: bool) -> None:
        self.closing = closing

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        raise RuntimeError("unable to perform operation: the handler is closed")


@pytest.mark.parametrize("closing", [True, False])
def test_a_transport_that_closed_itself_closes_the_wire_instead_of_raising(closing: bool) -> None:
    protocol = SimpleNamespace(transport=ClosedTransport(closing))
    wire = Wire(protocol)  # type: ignore[arg-type]
    wire.open = True
    assert wire.write(Frame('"frame"')) is False
    assert wire.open is False
