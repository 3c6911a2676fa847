"""HTTP: publish one message, read a channel's history and presence, list channels."""

from __future__ import annotations

from typing import Annotated, Final

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from app.errors import BrokerError, BrokerUnavailable, ProtocolError
from app.ingest.checks import IDEMPOTENCY_KEY_RULE, json_refusal, valid_idempotency_key
from app.protocol import frames, names
from app.protocol.codes import ErrorCode
from app.server.auth import AuthError
from app.server.lifecycle import Relay
from app.server.routes.common import DRAINING_DETAIL, auth_response, authorize, error_response, relay_of

router = APIRouter()

HISTORY_LIMIT: Final = 1000
HISTORY_BYTES: Final = 8 * 1024 * 1024  # a page holds at most this much message data
CHANNELS_LIMIT: Final = 10_000


# ``{channel:path}``: a name holding a slash (``a%2Fb``, which the server decodes) or a dot segment
# gets the channel rule's 400, not a 404 from a route that does not match
@router.post("/channels/{channel:path}/messages", status_code=201)
async def publish(
    request: Request, channel: str, idempotency_key: Annotated[str | None, Header()] = None
) -> Response:
    relay = relay_of(request)
    refusal = _refusal(request, relay, channel, publish=True)
    if refusal is not None:
        return refusal
    if idempotency_key is not None and not valid_idempotency_key(idempotency_key):
        return error_response(400, ErrorCode.INVALID_REQUEST, f"Idempotency-Key: {IDEMPOTENCY_KEY_RULE}")
    if relay.draining:
        return error_response(503, ErrorCode.UNAVAILABLE, DRAINING_DETAIL, {"Retry-After": "1"})
    if relay.publisher.full:
        return error_response(
            503, ErrorCode.UNAVAILABLE, "too much is waiting for Redis; retry", {"Retry-After": "1"}
        )
    limit = relay.settings.max_message_bytes
    body = await _read_body(request, limit)
    if body is None:
        return error_response(413, ErrorCode.TOO_LARGE, f"body over RELAY_MAX_MESSAGE_BYTES ({limit})")
    text = _message_text(body)
    if isinstance(text, Response):
        return text
    try:
        entry_id, replayed = await relay.publisher.submit(channel, text, idempotency_key)
    except BrokerUnavailable as exc:
        return error_response(503, ErrorCode.UNAVAILABLE, f"not stored: {exc}", {"Retry-After": "1"})
    except BrokerError as exc:
        return error_response(500, ErrorCode.STORAGE_ERROR, f"not stored: {exc}")
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(
        orjson.dumps({"id": entry_id}), status_code=201, media_type="application/json", headers=headers
    )


def _refusal(request: Request, relay: Relay, channel: str, *, publish: bool) -> Response | None:
    """The 400, 401 or 403 for a bad channel name or a token that does not cover it, or None."""
    try:
        names.check_channel(channel)
        authorize(request, relay, channel, publish=publish)
    except ProtocolError as exc:
        return error_response(400, exc.code, exc.detail)
    except AuthError as exc:
        return auth_response(exc)
    return None


def _message_text(body: bytes) -> str | Response:
    """The body as a message's JSON text, or the 400 that refuses it."""
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        return error_response(
            400, ErrorCode.INVALID_JSON, f"expected UTF-8 text holding one JSON value: {exc}"
        )
    refusal = json_refusal(text)
    return text if refusal is None else error_response(400, ErrorCode.INVALID_JSON, refusal)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@router.get("/channels/{channel:path}/messages")
async def history(
    request: Request,
    channel: str,
    from_: Annotated[str | None, Query(alias="from")] = None,
    limit: Annotated[int, Query(ge=1, le=HISTORY_LIMIT)] = 100,
) -> Response:
    relay = relay_of(request)
    try:
        names.check_channel(channel)
        position = names.parse_position("0" if from_ is None else from_)  # an empty from= is refused
        authorize(request, relay, channel, publish=False)
    except ProtocolError as exc:
        return error_response(400, exc.code, exc.detail)
    except AuthError as exc:
        return auth_response(exc)
    if position.latest:
        return error_response(400, ErrorCode.INVALID_ID, "history needs from=0 or an entry id, not $")
    count = min(limit, max(16, HISTORY_BYTES // relay.settings.max_message_bytes))  # bounded response size
    try:
        page = await relay.broker.read(
            channel, position.after, until=None, count=count, report_gap=position.report_gap
        )
    except BrokerError as exc:
        return error_response(503, ErrorCode.UNAVAILABLE, str(exc), {"Retry-After": "1"})
    if not page.exists:
        return error_response(404, ErrorCode.UNKNOWN_CHANNEL, f"channel {channel!r} has no stream")
    messages = ",".join(frames.message(entry_id, channel, data) for entry_id, data in page.entries)
    next_id = page.entries[-1][0] if page.entries else position.text
    gap = ""
    if page.lost_until is not None:
        # "next": the first message after the loss; null when none has been published since
        first = f'"{page.entries[0][0]}"' if page.entries else "null"
        gap = f',"gap":{{"type":"gap","from":"{position.text}","next":{first}}}'
    body = f'{{"channel":"{channel}","messages":[{messages}],"next":"{next_id}"{gap}}}'
    return Response(body, media_type="application/json")


@router.get("/channels/{channel:path}/presence")
async def presence(request: Request, channel: str) -> Response:
    """Every ``/ws`` connection present on the channel, on every instance."""
    relay = relay_of(request)
    refusal = _refusal(request, relay, channel, publish=False)
    if refusal is not None:
        return refusal
    try:
        clients = await relay.presence.clients(channel)
    except BrokerError as exc:
        return error_response(503, ErrorCode.UNAVAILABLE, str(exc), {"Retry-After": "1"})
    return Response(
        f'{{"channel":"{channel}","clients":[{",".join(clients)}]}}', media_type="application/json"
    )


@router.get("/channels")
async def channels(
    request: Request, limit: Annotated[int, Query(ge=1, le=CHANNELS_LIMIT)] = 1000
) -> Response:
    relay = relay_of(request)
    try:
        grant = relay.auth.grant(request)
        infos = [i for i in await relay.broker.channels(limit) if grant.may_subscribe(i.name)]
    except AuthError as exc:
        return auth_response(exc)
    except BrokerError as exc:
        return error_response(503, ErrorCode.UNAVAILABLE, str(exc), {"Retry-After": "1"})
    body = {
        "channels": [
            {
                "name": i.name,
                "length": i.length,
                "first_id": i.first_id,
                "last_id": i.last_id,
                "groups": i.groups,
            }
            for i in infos
        ]
    }
    return Response(orjson.dumps(body), media_type="application/json")
