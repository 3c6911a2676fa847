"""The client-side commands of ``relay`` (publish, tail, presence, channels), on top of ``app.client``.

Exit status: 0 success; 2 refused or bad input (a bad channel, a line that is not JSON, a URL
without http:// or ws://); 3 the relay unreachable or unavailable for too long; 130 interrupted.
``publish`` stops at the first message it cannot store; the lines before it were stored (their
ids are printed).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

import httpx2

from app.client.consumer import Consumer, Gap, Message
from app.client.errors import ClientError, NotStored, Unreachable, error_of
from app.client.multiplex import Event, Relay
from app.client.producer import Producer
from app.client.urls import http_url
from app.protocol.codes import RETRY_STATUSES

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


async def tail_many(
    url: str,
    channels: Sequence[str],
    from_: str | None,
    count: int | None,
    give_up: float | None,
    token: str | None,
) -> int:
    """Follow several channels over one ``/ws`` connection; every line names its channel."""
    try:
        async with Relay(url, token=token, give_up_after=give_up) as relay:
            return await _print_merged(relay, channels, from_, count)
    except Unreachable as exc:
        return _fail(str(exc), UNREACHABLE)
    except ClientError as exc:
        return _fail(str(exc), REFUSED)


async def _print_merged(relay: Relay, channels: Sequence[str], from_: str | None, count: int | None) -> int:
    """Print the events of every channel as they come, until ``count`` messages."""
    events: asyncio.Queue[Event | ClientError] = asyncio.Queue(maxsize=1)  # each channel waits its turn

    async def follow(channel: str) -> None:
        try:  # read each as soon as it is subscribed: an unread one would hold the others back
            async for event in await relay.subscribe(channel, from_=from_):
                await events.put(event)
        except ClientError as exc:
            await events.put(exc)

    tasks = [asyncio.create_task(follow(channel)) for channel in channels]
    try:
        seen = 0
        while count is None or seen < count:
            event = await events.get()
            if isinstance(event, ClientError):
                raise event
            if isinstance(event, Message):
                _print(_message(event, False))
                seen += 1
            elif isinstance(event, Gap):
                _print({"channel": event.channel, "gap": {"from": event.after, "next": event.next}})
        return OK
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


def _message(event: Message, with_delivery: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": event.id, "channel": event.channel, "data": event.data}
    if with_delivery:
        out["delivery"] = event.delivery
    return out


async def presence(url: str, channel: str, token: str | None) -> int:
    """Print ``GET /channels/{channel}/presence`` as one JSON line."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with httpx2.AsyncClient(
            base_url=http_url(url.rstrip("/")), timeout=10, headers=headers
        ) as http:
            response = await http.get(f"/channels/{quote(channel, safe='')}/presence")
    except httpx2.TransportError as exc:
        return _fail(f"cannot reach {url}: {exc}", UNREACHABLE)
    if response.status_code in RETRY_STATUSES:
        return _fail(error_of(response), UNREACHABLE)
    if response.status_code != 200:
        return _fail(error_of(response), REFUSED)
    _print(response.json())
    return OK


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
