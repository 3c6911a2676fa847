"""``WS /ws/consumer/{channel}?group=<name>&prefetch=<n>``: competing consumers (work queues).

The member receives ``message`` frames carrying ``delivery`` and answers each with
``{"type":"ack","id":...}``; it never holds more than ``prefetch`` unacknowledged messages
(:mod:`app.groups`). Two tasks, as for fan-out consumers: the handler writes, a reader takes acks.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import orjson
from fastapi import WebSocket

from app import metrics, protocol
from app.broker import Delivery
from app.errors import BrokerError, ProtocolError
from app.groups import Membership
from app.lifecycle import Relay
from app.protocol import ErrorCode
from app.routes.common import Admission, refuse
from app.routes.connection import Connection

log = logging.getLogger("relay.members")


async def serve_member(websocket: WebSocket, relay: Relay, channel: str, admission: Admission) -> None:
    manager = relay.groups
    params = websocket.query_params
    try:
        group = protocol.check_group(params["group"])
        prefetch = protocol.parse_prefetch(params.get("prefetch"), manager.settings.group_prefetch)
    except ProtocolError as exc:
        await refuse(websocket, 400, ErrorCode(exc.code), exc.detail)
        return
    if not admission.grant.may_join(group):
        await refuse(websocket, 403, ErrorCode.FORBIDDEN, f"the token does not allow to join group {group!r}")
        return
    member = GroupMember(websocket, channel, prefetch, expires=admission.grant.expires)
    with relay.connection(member):  # counted from here: the limit holds while Redis answers
        try:
            membership = await manager.join(channel, group, member, admission.position)
        except BrokerError as exc:
            await refuse(websocket, 503, ErrorCode.UNAVAILABLE, f"cannot join the group now: {exc}")
            return
        try:
            await member.run(membership, group)
        finally:
            manager.leave(membership)


class GroupMember(Connection):
    """One WebSocket member of a group: a :class:`app.groups.Member`."""

    role = "member"

    def __init__(self, websocket: WebSocket, channel: str, prefetch: int, *, expires: float | None) -> None:
        super().__init__(websocket, channel, expires=expires)
        self.prefetch = prefetch
        self._out: deque[Delivery] = deque()  # at most prefetch: the reader gives no more
        self._membership: Membership | None = None

    def deliver(self, deliveries: list[Delivery]) -> None:
        self._out.extend(deliveries)
        self.wake.set()

    def ack_failed(self, ids: list[str], error: BrokerError) -> None:
        detail = f"ack of {', '.join(ids[:5])} not recorded ({error}); delivered again after the idle time"
        self.answer(ErrorCode.UNAVAILABLE, detail, flood=False)

    async def run(self, membership: Membership, group: str) -> None:
        self._membership = membership
        await self.serve(protocol.group_subscribed_frame(self.channel, group))

    async def write(self) -> None:
        websocket, channel = self.websocket, self.channel
        while not self.closing:
            await self.send_answers()
            if not self._out:
                await self.wake.wait()
                continue
            delivery = self._out.popleft()
            frame = protocol.group_message_frame(delivery.entry_id, channel, delivery.data, delivery.count)
            await websocket.send_text(frame)
            metrics.DELIVERED.inc()

    def on_frame(self, message: Any) -> None:
        error = self._ack(message)
        if error is not None:
            self.answer(*error)

    def _ack(self, message: Any) -> tuple[ErrorCode, str] | None:
        """Act on one frame from the member; the error to answer with, if any."""
        membership = self._membership
        assert membership is not None
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
