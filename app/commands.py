"""The client-side commands of ``relay`` (publish, tail, channels), on top of ``app.client``.

Exit status: 0 success, 1 some messages not stored, 2 refused or bad input, 3 relay unreachable.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx2

from app.client import ClientError, Consumer, Gap, Message, NotStored, Producer, http_url


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _fail(text: str, status: int) -> int:
    sys.stderr.write(f"relay: {text}\n")
    return status


async def publish(url: str, channel: str, message: str | None, window: int, attempts: int) -> int:
    lines = [message] if message is not None else (line for line in sys.stdin if line.strip())
    failed = 0
    try:
        async with Producer(url, channel, window=window, attempts=attempts) as producer:
            for number, line in enumerate(lines, 1):
                try:
                    data = json.loads(line)
                except ValueError as exc:
                    return _fail(f"line {number} is not JSON: {exc}", 2)
                try:
                    _print({"id": await producer.publish(data)})
                except NotStored as exc:
                    failed += 1
                    _print({"error": str(exc)})
                except ClientError as exc:
                    return _fail(str(exc), 2)
    except httpx2.InvalidURL as exc:
        return _fail(str(exc), 2)
    return 1 if failed else 0


async def tail(url: str, channel: str, from_: str | None, group: str | None, count: int | None) -> int:
    seen = 0
    consumer = Consumer(url, channel, from_=from_, group=group)
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
                return 0
    except ClientError as exc:
        return _fail(str(exc), 2)
    return 0


def _message(event: Message, with_delivery: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": event.id, "channel": event.channel, "data": event.data}
    if with_delivery:
        out["delivery"] = event.delivery
    return out


async def channels(url: str, as_json: bool) -> int:
    try:
        async with httpx2.AsyncClient(base_url=http_url(url.rstrip("/")), timeout=10) as http:
            response = await http.get("/channels")
    except httpx2.TransportError as exc:
        return _fail(f"cannot reach {url}: {exc}", 3)
    if response.status_code != 200:
        return _fail(f"{response.status_code}: {response.text[:200]}", 2)
    listed = response.json()["channels"]
    if as_json:
        for channel in listed:
            _print(channel)
        return 0
    rows = [("NAME", "LENGTH", "FIRST ID", "LAST ID", "GROUPS")]
    rows += [
        (c["name"], str(c["length"]), c["first_id"] or "-", c["last_id"], str(c["groups"])) for c in listed
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        sys.stdout.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
        )
    return 0
