"""The connection base on its own, in-process (Starlette's test client: the ASGI path)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.protocol.codes import Close, ErrorCode
from app.server.connection import Connection


class Echo(Connection):
    """A kind that answers every frame, and has a bug when told ``boom``."""

    role = "echo"

    async def write(self) -> None:
        while not self.closing:
            await self.send_replies()
            await self.wake.wait()

    def on_frame(self, message: Message) -> None:
        text = message.get("text")
        if text == "boom":
            raise RuntimeError("a bug in on_frame")
        if text == "bad":
            self.refuse(ErrorCode.INVALID_REQUEST, "bad frame")
        else:
            self.reply(f"echo {text}")


@pytest.fixture
def client() -> Iterator[TestClient]:
    async def endpoint(websocket: WebSocket) -> None:
        await Echo(websocket, "c").run("hello")

    with TestClient(Starlette(routes=[WebSocketRoute("/ws", endpoint)])) as client:
        yield client


def test_replies_come_in_order_after_the_first_frame(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_text() == "hello"
        for n in range(3):
            ws.send_text(str(n))
        assert [ws.receive_text() for _ in range(3)] == ["echo 0", "echo 1", "echo 2"]


def test_a_reader_that_fails_closes_the_connection_with_1011_instead_of_leaving_it_open(
    client: TestClient,
) -> None:
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_text() == "hello"
        ws.send_text("boom")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == Close.INTERNAL


def test_more_than_32_bad_frames_in_10_s_close_the_connection_with_1008(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_text() == "hello"
        for _ in range(33):
            ws.send_text("bad")
        replies = [ws.receive_text() for _ in range(32)]
        assert all('"invalid_request"' in reply for reply in replies)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()  # the 33rd gets no reply: the connection closes
        assert closed.value.code == Close.POLICY
