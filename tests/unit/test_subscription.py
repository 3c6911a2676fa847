"""The subscription's splice of stream reads and live messages, against an in-memory stream."""

from __future__ import annotations

import json
from collections.abc import Callable

from app.broker.interface import Page
from app.fanout.pages import PAGE, PageSource
from app.fanout.sink import Frame
from app.fanout.subscription import Subscription
from app.protocol import frames, streamid
from app.protocol.streamid import StreamId


class FakeStream:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self.added = 0
        self.watermark: StreamId | None = None
        self.reads = 0
        self.during_read: Callable[[], None] | None = None

    def add(self, n: object) -> tuple[StreamId, Frame]:
        self.added += 1
        entry_id = f"{self.added}-0"
        self.entries.append((entry_id, json.dumps(n)))
        return streamid.parse(entry_id), Frame(frames.message(entry_id, "c", json.dumps(n)))

    def trim(self, keep: int) -> None:
        removed, self.entries = self.entries[:-keep], self.entries[-keep:]
        self.watermark = streamid.parse(removed[-1][0])

    async def read(
        self, channel: str, after: StreamId, *, until: StreamId | None, count: int, report_gap: bool = True
    ) -> Page:
        self.reads += 1
        if self.during_read is not None:
            hook, self.during_read = self.during_read, None
            hook()
        chosen = [
            (i, d)
            for i, d in self.entries
            if after < streamid.parse(i) and (until is None or streamid.parse(i) <= until)
        ]
        lost = (
            self.watermark if report_gap and self.watermark is not None and self.watermark > after else None
        )
        return Page(chosen[:count], lost)


def make(
    stream: FakeStream, last: StreamId, base: StreamId, limit: int = 10, report_gap: bool = True
) -> Subscription:
    sub = Subscription("c", wake=lambda: None)
    sub.begin(last=last, base=base, report_gap=report_gap, limit=limit, reader=PageSource(stream.read).read)
    return sub


async def drain(sub: Subscription) -> list[dict[str, object]]:
    frames: list[dict[str, object]] = []
    for _ in range(1000):
        batch = await sub.take()
        if not batch:
            return frames
        frames.extend(json.loads(m.text) for m in batch)
    raise AssertionError("take() never ran dry")


def data(frames: list[dict[str, object]]) -> list[object]:
    return [f["data"] for f in frames if f["type"] == "message"]


async def test_live_messages_pass_in_order_without_reads() -> None:
    stream = FakeStream()
    sub = make(stream, (0, 0), (0, 0))
    for n in range(5):
        sub.push(*stream.add(n))
    assert data(await drain(sub)) == [0, 1, 2, 3, 4]
    assert stream.reads == 0


async def test_resume_reads_up_to_the_attach_point_then_continues_live() -> None:
    stream = FakeStream()
    for n in range(30):
        stream.add(n)
    sub = make(stream, streamid.parse("10-0"), streamid.parse("30-0"))  # resumed after entry 10
    for n in range(30, 35):
        sub.push(*stream.add(n))  # live while it catches up
    assert data(await drain(sub)) == list(range(10, 35))


async def test_overflow_falls_back_to_the_stream_and_loses_nothing() -> None:
    stream = FakeStream()
    sub = make(stream, (0, 0), (0, 0), limit=10)
    for n in range(100):
        sub.push(*stream.add(n))
    assert sub.behind
    assert data(await drain(sub)) == list(range(100))


async def test_overflow_during_the_catch_up_read_moves_the_target() -> None:
    stream = FakeStream()
    sub = make(stream, (0, 0), (0, 0), limit=5)
    for n in range(20):
        sub.push(*stream.add(n))

    def burst() -> None:
        for n in range(20, 40):
            sub.push(*stream.add(n))

    stream.during_read = burst
    assert data(await drain(sub)) == list(range(40))


async def test_catch_up_spans_pages() -> None:
    stream = FakeStream()
    for n in range(PAGE * 2 + 7):
        stream.add(n)
    sub = make(stream, (0, 0), streamid.parse(f"{PAGE * 2 + 7}-0"))
    assert data(await drain(sub)) == list(range(PAGE * 2 + 7))


async def test_a_trimmed_position_gets_a_gap_frame_first() -> None:
    stream = FakeStream()
    for n in range(20):
        stream.add(n)
    stream.trim(keep=5)
    sub = make(stream, streamid.parse("3-0"), streamid.parse("20-0"))
    frames = await drain(sub)
    assert frames[0] == {"type": "gap", "channel": "c", "from": "3-0", "next": "16-0"}
    assert data(frames) == [15, 16, 17, 18, 19]


async def test_from_zero_reports_no_gap_but_a_later_fall_back_does() -> None:
    stream = FakeStream()
    for n in range(20):
        stream.add(n)
    stream.trim(keep=5)
    sub = make(stream, (0, 0), streamid.parse("20-0"), report_gap=False)
    assert [f["type"] for f in await drain(sub)] == ["message"] * 5  # what is retained, no gap

    for n in range(20, 50):
        stream.add(n)
    stream.trim(keep=5)  # entries 21..45 are gone before this consumer got them
    sub.fall_behind(streamid.parse("50-0"))
    frames = await drain(sub)
    assert frames[0] == {"type": "gap", "channel": "c", "from": "20-0", "next": "46-0"}
    assert data(frames) == [45, 46, 47, 48, 49]


async def test_when_everything_up_to_the_target_is_gone_the_gap_names_the_next_message() -> None:
    stream = FakeStream()
    for n in range(10):
        stream.add(n)
    stream.trim(keep=1)
    stream.entries.clear()  # age trimming removed the last one too (watermark: 9-0)
    stream.watermark = (10, 0)
    sub = make(stream, streamid.parse("3-0"), streamid.parse("10-0"))
    assert await drain(sub) == []  # nothing to say yet: the next message is unknown
    sub.push(*stream.add("new"))
    frames = await drain(sub)
    assert frames[0] == {"type": "gap", "channel": "c", "from": "3-0", "next": "11-0"}
    assert data(frames) == ["new"]


async def test_a_loss_marker_becomes_a_gap_frame_even_when_an_overflow_drops_it() -> None:
    stream = FakeStream()
    sub = make(stream, (0, 0), (0, 0), limit=3)
    sub.push(*stream.add("before"))
    sub.push_loss()
    sub.push(*stream.add("after"))
    frames = await drain(sub)
    assert [f["type"] for f in frames] == ["message", "gap", "message"]
    assert frames[1] == {"type": "gap", "channel": "c", "from": "1-0", "next": "2-0"}

    sub.push_loss()
    for n in range(5):  # overflows: the marker goes with the buffer, its news does not
        sub.push(*stream.add(n))
    frames = await drain(sub)
    assert frames[0]["type"] == "gap"
    assert data(frames) == [0, 1, 2, 3, 4]


class FakeWire:
    """Takes frames while ``open``, like a transport below its high-water mark."""

    def __init__(self) -> None:
        self.open = True
        self.written: list[bytes] = []

    def write(self, frame: Frame) -> bool:
        if self.open:
            self.written.append(frame.data)
        return self.open

    def frames(self) -> list[dict[str, object]]:
        return [json.loads(raw[2:]) for raw in self.written]  # payloads under 126 bytes


def parked(sub: Subscription, wire: FakeWire) -> None:
    sub.park(wire)


async def test_a_parked_subscription_writes_live_messages_to_the_wire_without_buffering() -> None:
    stream = FakeStream()
    sub = make(stream, (0, 0), (0, 0))
    wire = FakeWire()
    parked(sub, wire)
    assert [sub.push(*stream.add(n)) for n in range(3)] == [True, True, True]
    assert [f["data"] for f in wire.frames()] == [0, 1, 2]
    assert sub.buffered == 0
    assert sub.last == (3, 0)
    assert await drain(sub) == []


async def test_a_wire_that_stops_taking_data_unparks_and_nothing_overtakes() -> None:
    stream = FakeStream()
    sub = make(stream, (0, 0), (0, 0))
    wire = FakeWire()
    parked(sub, wire)
    sub.push(*stream.add(0))
    wire.open = False
    assert sub.push(*stream.add(1)) is False  # buffered: the writer sends it
    wire.open = True  # the transport drained, but the writer has not run yet
    assert sub.push(*stream.add(2)) is False  # must queue behind 1, not jump ahead of it
    assert [f["data"] for f in wire.frames()] == [0]
    assert data(await drain(sub)) == [1, 2]


async def test_no_parking_while_anything_is_owed() -> None:
    stream = FakeStream()
    for n in range(3):
        stream.add(n)
    behind = make(stream, (0, 0), (3, 0))
    wire = FakeWire()
    parked(behind, wire)
    assert behind.push(*stream.add(3)) is False
    assert data(await drain(behind)) == [0, 1, 2, 3]

    buffered = make(stream, (4, 0), (4, 0))
    buffered.push(*stream.add(4))
    parked(buffered, wire)
    assert buffered.push(*stream.add(5)) is False
    assert data(await drain(buffered)) == [4, 5]
    assert wire.written == []


async def test_a_loss_or_falling_behind_unparks() -> None:
    stream = FakeStream()
    sub = make(stream, (0, 0), (0, 0))
    wire = FakeWire()
    parked(sub, wire)
    sub.push_loss()
    sub.push(*stream.add("after"))
    frames = await drain(sub)
    assert [f["type"] for f in frames] == ["gap", "message"]
    assert wire.written == []

    parked(sub, wire)
    stream.add("missed")
    sub.fall_behind(streamid.parse(stream.entries[-1][0]))
    assert sub.push(*stream.add("next")) is False
    assert data(await drain(sub)) == ["missed", "next"]
    assert wire.written == []


async def test_a_consumer_resuming_ahead_of_the_topic_gets_nothing_twice_parked_or_not() -> None:
    """``from=X`` where this instance has not passed X on yet (the client saw it elsewhere)."""
    for park in (True, False):
        stream = FakeStream()
        ids = [stream.add(n) for n in range(4)]  # 1-0 .. 4-0 stored; the topic is still at 1-0
        sub = make(stream, last=streamid.parse("3-0"), base=streamid.parse("1-0"))
        wire = FakeWire()
        if park:
            parked(sub, wire)
        for sid, message in ids[1:]:  # the topic catches up: 2-0, 3-0, then the new 4-0
            sub.push(sid, message)
        got = [f["data"] for f in wire.frames()] + data(await drain(sub))
        assert got == [3], f"parked={park}"
