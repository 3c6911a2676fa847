"""``WS /ws/consumer/{channel}?group=<name>&prefetch=<n>``: competing consumers (work queues).

The member receives ``message`` frames carrying ``delivery`` and answers each with
``{"type":"ack","id":...}``; it never holds more than ``prefetch`` unacknowledged messages
(:mod:`app.groups`). Two tasks, as for fan-out consumers: the handler writes, a reader takes acks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import orjson
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from app import metrics, protocol
from app.broker import Delivery
from app.errors import BrokerError, ProtocolError
from app.groups import Membership
from app.lifecycle import Relay
from app.protocol import Close, ErrorCode
from app.routes.common import FLOOD_REASON, FloodGuard, refuse
from app.wakeup import Wakeup

log = logging.getLogger("relay.members")


async def serve_member(websocket: WebSocket, relay: Relay, channel: str, position: protocol.Position) -> None:
    manager = relay.groups
    params = websocket.query_params
    try:
        group = protocol.check_group(params["group"])
        prefetch = protocol.parse_prefetch(params.get("prefetch"), manager.settings.group_prefetch)
    except ProtocolError as exc:
        await refuse(websocket, 400, ErrorCode(exc.code), exc.detail)
        return
    member = GroupMember(websocket, channel, prefetch)
    try:
        membership = await manager.join(channel, group, member, position)
    except BrokerError as exc:
        await refuse(websocket, 503, ErrorCode.UNAVAILABLE, f"cannot join the group now: {exc}")
        return
    try:
        with relay.connection(member):
            await member.run(membership, group)
    finally:
        manager.leave(membership)


class GroupMember:
    """One WebSocket member of a group: a :class:`app.groups.Member`."""

    def __init__(self, websocket: WebSocket, channel: str, prefetch: int) -> None:
        self.websocket = websocket
        self.channel = channel
        self.prefetch = prefetch
        self._out: deque[Delivery] = deque()  # at most prefetch: the reader gives no more
        self._control: deque[str] = deque()
        self._flood = FloodGuard()
        self._wake = Wakeup()
        self._closing = asyncio.Event()
        self._close: tuple[int, str] | None = None

    def deliver(self, deliveries: list[Delivery]) -> None:
        self._out.extend(deliveries)
        self._wake.set()

    def ack_failed(self, ids: list[str], error: BrokerError) -> None:
        detail = f"ack of {', '.join(ids[:5])} not recorded ({error}); delivered again after the idle time"
        self._answer(ErrorCode.UNAVAILABLE, detail, flood=False)

    def request_close(self, code: int, reason: str) -> None:
        if not self._closing.is_set():
            self._close = (code, reason)
            self._stop()

    def _stop(self) -> None:
        self._closing.set()
        self._wake.set()

    async def run(self, membership: Membership, group: str) -> None:
        websocket = self.websocket
        await websocket.accept()
        metrics.CONNECTIONS.labels("member").inc()
        reader = asyncio.create_task(self._read(membership))
        try:
            await websocket.send_text(protocol.group_subscribed_frame(self.channel, group))
            await self._write()
            if self._close is not None:
                await websocket.close(*self._close)
        except WebSocketDisconnect:
            pass
        finally:
            reader.cancel()
            metrics.CONNECTIONS.labels("member").dec()

    async def _write(self) -> None:
        websocket, channel = self.websocket, self.channel
        while not self._closing.is_set():
            while self._control:
                await websocket.send_text(self._control.popleft())
            if not self._out:
                await self._wake.wait()
                continue
            delivery = self._out.popleft()
            frame = protocol.group_message_frame(delivery.entry_id, channel, delivery.data, delivery.count)
            await websocket.send_text(frame)
            metrics.DELIVERED.inc()

    async def _read(self, membership: Membership) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                self._stop()  # gone: what it held is delivered again after the idle time
                return
            error = self._handle(membership, message)
            if error is not None:
                self._answer(*error)

    def _answer(self, code: ErrorCode, detail: str, *, flood: bool = True) -> None:
        """Queue an error frame; ``flood``: it answers a bad frame of the member's, which counts."""
        if flood and self._flood.flooding():
            self.request_close(Close.POLICY, FLOOD_REASON)
            return
        metrics.ERRORS.labels(code).inc()
        self._control.append(protocol.error_frame(code, detail))
        self._wake.set()

    def _handle(self, membership: Membership, message: Any) -> tuple[ErrorCode, str] | None:
        """Act on one frame from the member; the error to answer with, if any."""
        text = message.get("text")
        if text is None:
            return ErrorCode.BINARY_FRAME, "expected a text frame holding JSON, got binary"
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return ErrorCode.INVALID_JSON, f"expected one JSON value: {exc}"
        if not isinstance(frame, dict) or frame.get("type") != "ack" or not isinstance(frame.get("id"), str):
            return ErrorCode.INVALID_REQUEST, 'expected {"type":"ack","id":"<entry id>"}'
        entry_id = frame["id"]
        if membership.reader.ack(membership, [entry_id]):
            return ErrorCode.UNKNOWN_ID, f"{entry_id[:60]} is not a message this member holds"
        return None
