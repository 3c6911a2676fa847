"""The client-side commands of ``relay`` (publish, tail, channels), on top of ``app.client``.

Exit status: 0 success; 2 refused or bad input (a bad channel, a line that is not JSON, a URL
without http:// or ws://); 3 the relay unreachable or unavailable for too long; 130 interrupted.
``publish`` stops at the first message it cannot store; the lines before it were stored (their
ids are printed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

import httpx2

from app.client.consumer import Consumer, Gap, Message
from app.client.errors import ClientError, NotStored, Unreachable
from app.client.producer import Producer
from app.client.urls import http_url

OK, REFUSED, UNREACHABLE = 0, 2, 3


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _fail(text: str, status: int) -> int:
    sys.stderr.write(f"relay: {text}\n")
    return status


def check_url(url: str) -> str | None:
    """The problem with ``url``, if any."""
    if not url.startswith(("http://", "https://", "ws://", "wss://")):
        return f"--url must start with http://, https://, ws:// or wss://, got {url!r}"
    return None


def _lines(message: str | None) -> Iterable[tuple[int, str]]:
    """(line number, text) of every message to send; blank lines are skipped, not renumbered."""
    if message is not None:
        yield 1, message
        return
    for number, line in enumerate(sys.stdin, 1):
        if line.strip():
            yield number, line


async def publish(url: str, channel: str, message: str | None, attempts: int, token: str | None) -> int:
    async with Producer(url, channel, window=1, attempts=attempts, token=token) as producer:
        for number, line in _lines(message):
            try:
                data = json.loads(line)
            except ValueError as exc:
                return _fail(f"line {number} is not JSON: {exc}", REFUSED)
            try:
                _print({"id": await producer.publish(data)})  # one at a time: stored in line order
            except NotStored as exc:
                return _fail(f"line {number}: {exc}", UNREACHABLE)
            except ClientError as exc:
                return _fail(f"line {number}: {exc}", REFUSED)
    return OK


async def tail(
    url: str,
    channel: str,
    from_: str | None,
    group: str | None,
    count: int | None,
    give_up: float | None,
    token: str | None,
) -> int:
    prefetch = (
        min(count, 10) if group is not None and count is not None else None
    )  # take no more than printed
    consumer = Consumer(
        url, channel, from_=from_, group=group, prefetch=prefetch, give_up_after=give_up, token=token
    )
    seen = 0
    try:
        async for event in consumer:
            if isinstance(event, Gap):
                _print({"gap": {"from": event.after, "next": event.next}})
                continue
            _print(_message(event, group is not None))
            seen += 1
            if count is not None and seen >= count:
                if group is not None:
                    await consumer.ack(event.id)
                return OK
    except Unreachable as exc:
        return _fail(str(exc), UNREACHABLE)
    except ClientError as exc:
        return _fail(str(exc), REFUSED)
    return OK


def _message(event: Message, with_delivery: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": event.id, "channel": event.channel, "data": event.data}
    if with_delivery:
        out["delivery"] = event.delivery
    return out


async def channels(url: str, as_json: bool, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with httpx2.AsyncClient(
            base_url=http_url(url.rstrip("/")), timeout=10, headers=headers
        ) as http:
            response = await http.get("/channels")
    except httpx2.TransportError as exc:
        return _fail(f"cannot reach {url}: {exc}", UNREACHABLE)
    if response.status_code != 200:
        return _fail(f"{response.status_code}: {response.text[:200]}", REFUSED)
    listed = response.json()["channels"]
    if as_json:
        for channel in listed:
            _print(channel)
        return OK
    rows = [("NAME", "LENGTH", "FIRST ID", "LAST ID", "GROUPS")]
    rows += [
        (c["name"], str(c["length"]), c["first_id"] or "-", c["last_id"], str(c["groups"])) for c in listed
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        sys.stdout.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
        )
    return OK
