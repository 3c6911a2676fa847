"""``WS /ws/consumer/{channel}?group=<name>&prefetch=<n>``: competing consumers (work queues).

The member receives ``message`` frames carrying ``delivery`` and answers each with
``{"type":"ack","id":...}``; it never holds more than ``prefetch`` unacknowledged messages
(:mod:`app.groups`). As for fan-out consumers, the handler writes and a reader takes the acks.
"""

from __future__ import annotations

from collections import deque

import orjson
from starlette.types import Message
from starlette.websockets import WebSocket

from app import metrics
from app.broker.interface import Delivery
from app.errors import BrokerError, ProtocolError
from app.groups.member import Membership
from app.protocol import frames, names
from app.protocol.codes import ErrorCode
from app.server.connection import Connection
from app.server.lifecycle import Relay
from app.server.routes.common import Admission, deny


async def serve_member(websocket: WebSocket, relay: Relay, channel: str, admission: Admission) -> None:
    manager = relay.groups
    params = websocket.query_params
    try:
        group = names.check_group(params["group"])
        prefetch = names.parse_prefetch(params.get("prefetch"), relay.settings.group_prefetch)
    except ProtocolError as exc:
        await deny(websocket, 400, exc.code, exc.detail)
        return
    if not admission.grant.may_join(group):
        await deny(websocket, 403, ErrorCode.FORBIDDEN, f"the token does not allow to join group {group!r}")
        return
    member = GroupMember(websocket, channel, prefetch, expires=admission.grant.expires)
    relay.track(member)  # counted from here: the limit holds while Redis answers
    try:
        try:
            membership = await manager.join(channel, group, member, admission.position)
        except BrokerError as exc:
            await deny(websocket, 503, ErrorCode.UNAVAILABLE, f"cannot join the group now: {exc}")
            return
        try:
            await member.serve(membership, group)
        finally:
            manager.leave(membership)
    finally:
        relay.untrack(member)


class GroupMember(Connection):
    """One WebSocket member of a group: a :class:`app.groups.member.Member`."""

    role = "member"

    __slots__ = ("_membership", "_out", "prefetch")

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
        self.report(ErrorCode.UNAVAILABLE, detail)

    async def serve(self, membership: Membership, group: str) -> None:
        """Serve the membership until the connection closes."""
        self._membership = membership
        await self.run(frames.group_subscribed(self.channel, group))

    async def write(self) -> None:
        channel, pending = self.channel, self._out
        while not self.closing:
            await self.send_replies()
            if not pending:
                await self.wake.wait()
                continue
            texts = [frames.group_message(d.entry_id, channel, d.data, d.count) for d in pending]
            pending.clear()
            await self.out.send_texts(texts)
            metrics.DELIVERED.inc(len(texts))

    def on_frame(self, message: Message) -> None:
        error = self._ack(message)
        if error is not None:
            self.refuse(*error)

    def _ack(self, message: Message) -> tuple[ErrorCode, str] | None:
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
