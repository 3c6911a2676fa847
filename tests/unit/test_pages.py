"""Catch-up pages shared by consumers resuming from the same place, against an in-memory stream."""

from __future__ import annotations

import asyncio
import json

import pytest

from app.broker.interface import Page
from app.fanout.pages import PAGE, PageSource
from app.protocol import streamid
from app.protocol.streamid import StreamId
from tests.support import timeout


class Stream:
    """An in-memory stream whose reads can be held at a gate."""

    def __init__(self, n: int = 0) -> None:
        self.entries: list[tuple[str, str]] = []
        self.watermark: StreamId | None = None
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()
        self.add(n)

    def add(self, n: int) -> None:
        for _ in range(n):
            number = len(self.entries) + 1
            self.entries.append((f"{number}-0", json.dumps(number)))

    async def read(
        self, channel: str, after: StreamId, *, until: StreamId | None, count: int, report_gap: bool = True
    ) -> Page:
        self.reads += 1
        chosen = [  # as Redis answers: what is there when the read arrives
            (i, d)
            for i, d in self.entries
            if after < streamid.parse(i) and (until is None or streamid.parse(i) <= until)
        ]
        self.reading.set()
        if self.gate is not None:
            await self.gate.wait()  # the answer on its way
        lost = (
            self.watermark if report_gap and self.watermark is not None and self.watermark > after else None
        )
        return Page(chosen[:count], lost)


async def catch_up(source: PageSource, after: StreamId, until: StreamId) -> list[int]:
    """What a subscription does: pages until a short one."""
    got: list[int] = []
    for _ in range(100):
        page = await source.read("c", after, until=until)
        got.extend(json.loads(f.text)["data"] for f in page.frames)
        if page.ids:
            after = page.ids[-1]
        if len(page.ids) < PAGE:
            return got
    raise AssertionError("never reached the end")


async def test_consumers_resuming_together_read_each_page_once() -> None:
    stream = Stream(5 * PAGE + 20)
    source = PageSource(stream.read)
    until = streamid.parse(stream.entries[-1][0])
    async with asyncio.timeout(timeout(20)):
        results = await asyncio.gather(*(catch_up(source, (10, 0), until) for _ in range(300)))
    expected = list(range(11, 5 * PAGE + 21))
    assert all(got == expected for got in results)
    assert stream.reads <= 7  # five full pages and the short tail (once more at most)


async def test_a_shared_page_is_cut_at_each_consumers_own_end() -> None:
    stream = Stream(2 * PAGE)
    source = PageSource(stream.read)
    assert await catch_up(source, (0, 0), (PAGE + 200, 0)) == list(range(1, PAGE + 201))
    reads = stream.reads
    assert await catch_up(source, (0, 0), (300, 0)) == list(range(1, 301))  # from the kept page
    assert stream.reads == reads


async def test_a_short_read_begun_before_a_consumer_appeared_does_not_end_its_catch_up() -> None:
    stream = Stream(10)
    source = PageSource(stream.read)
    stream.gate = asyncio.Event()
    early = asyncio.create_task(catch_up(source, (0, 0), (10, 0)))
    async with asyncio.timeout(timeout(5)):
        await stream.reading.wait()  # the first read is under way, holding entries 1-10
    stream.add(5)  # published since; a consumer joining now has until 15
    late = asyncio.create_task(catch_up(source, (0, 0), (15, 0)))
    stream.gate.set()
    async with asyncio.timeout(timeout(5)):
        assert await early == list(range(1, 11))
        assert await late == list(range(1, 16))


async def test_the_read_goes_on_for_the_others_when_its_first_reader_leaves() -> None:
    stream = Stream(PAGE + 1)
    source = PageSource(stream.read)
    stream.gate = asyncio.Event()
    first = asyncio.create_task(source.read("c", (0, 0), until=(PAGE + 1, 0)))
    async with asyncio.timeout(timeout(5)):
        await stream.reading.wait()
    second = asyncio.create_task(source.read("c", (0, 0), until=(PAGE + 1, 0)))
    await asyncio.sleep(0)  # let the second join the read under way
    first.cancel()
    stream.gate.set()
    async with asyncio.timeout(timeout(5)):
        page = await second
    assert len(page.ids) == PAGE
    assert stream.reads == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_pages_with_a_gap_are_not_kept_and_reads_without_gap_reports_not_shared() -> None:
    stream = Stream(2 * PAGE)
    stream.watermark = (5, 0)
    source = PageSource(stream.read)
    for _ in range(2):
        page = await source.read("c", (0, 0), until=(2 * PAGE, 0))
        assert page.lost_until == (5, 0)
    assert stream.reads == 2
    for _ in range(2):
        page = await source.read("c", (0, 0), until=(2 * PAGE, 0), report_gap=False)
        assert page.lost_until is None
    assert stream.reads == 4


async def test_kept_pages_are_bounded_in_bytes() -> None:
    stream = Stream(6 * PAGE)
    source = PageSource(stream.read, max_bytes=2 * PAGE * 500)  # about two pages
    await catch_up(source, (0, 0), (6 * PAGE, 0))
    reads = stream.reads
    await catch_up(source, (0, 0), (6 * PAGE, 0))  # the first pages were let go: read again
    assert stream.reads > reads
    assert source.kept_bytes <= 2 * PAGE * 500


async def test_kept_pages_expire_and_channels_no_longer_followed_keep_none() -> None:
    stream = Stream(2 * PAGE)
    source = PageSource(stream.read, keep_for=0.0)
    for _ in range(2):
        await source.read("c", (0, 0), until=(2 * PAGE, 0))
    assert stream.reads == 2  # expired at once: read again
    unfollowed = PageSource(stream.read, followed=lambda channel: False)
    await unfollowed.read("c", (0, 0), until=(2 * PAGE, 0))
    assert unfollowed.kept_bytes == 0


async def test_kept_bytes_count_bytes_not_characters() -> None:
    stream = Stream()
    stream.entries = [(f"{n}-0", json.dumps("😀" * 200, ensure_ascii=False)) for n in range(1, PAGE + 1)]
    source = PageSource(stream.read)
    page = await source.read("c", (0, 0), until=(PAGE, 0))
    held = sum(len(f.data) + len(f.text.encode("utf-32")) for f in page.frames)
    assert source.kept_bytes >= held  # each emoji: 4 bytes in the frame, 4 in the text
