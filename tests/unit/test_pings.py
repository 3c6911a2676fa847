"""The keepalive pings of every connection on a loop share one timer (app.server.websocket.Pings)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from app.server.websocket import Pings, WebSocketProtocol


class _Connection:
    """What Pings calls of a protocol: ``ping_due``, recorded with the loop's time."""

    def __init__(self, name: str, pinged: list[tuple[str, float]], then: Callable[[], None]) -> None:
        self.name = name
        self.pinged = pinged
        self.then = then

    def ping_due(self) -> None:
        self.pinged.append((self.name, asyncio.get_running_loop().time()))
        self.then()

    def protocol(self) -> WebSocketProtocol:
        return cast(WebSocketProtocol, self)


async def test_each_ping_goes_out_once_within_a_tick_of_its_time_and_the_timer_ends_with_the_last() -> None:
    loop = asyncio.get_running_loop()
    interval = 0.4  # a tick of 0.05 s
    pinged: list[tuple[str, float]] = []
    both = asyncio.Event()
    pings = Pings.of(loop, interval)
    assert Pings.of(loop, 99) is pings  # one per loop
    start = loop.time()

    def when_both() -> None:
        if len(pinged) == 2:
            both.set()

    a, b, c = (_Connection(name, pinged, when_both) for name in "abc")
    pings.add(a.protocol(), 0.1)
    pings.add(b.protocol(), 0.3)
    pings.discard(c.protocol(), pings.add(c.protocol(), 0.2))  # its connection ended before
    await asyncio.wait_for(both.wait(), 5)
    assert [name for name, _ in pinged] == ["a", "b"]
    for (_, at), due in zip(pinged, (0.1, 0.3), strict=True):
        assert due <= at - start < due + 0.05 + 0.1  # a tick late at most, and the loop's own lag
    assert Pings.of(loop, interval) is not pings  # let go with the last ping due: a new one now


async def test_a_connection_pinged_again_goes_to_a_later_slot_and_nothing_runs_once_none_is_due() -> None:
    loop = asyncio.get_running_loop()
    pinged: list[tuple[str, float]] = []
    third = asyncio.Event()
    pings = Pings.of(loop, 0.2)
    slots: list[int] = []

    def again() -> None:
        if len(pinged) < 3:
            slots.append(pings.add(connection.protocol(), 0.05))
        else:
            third.set()

    connection = _Connection("again", pinged, again)
    slots.append(pings.add(connection.protocol(), 0.05))
    await asyncio.wait_for(third.wait(), 5)
    assert len(slots) == 3
    assert slots == sorted(set(slots))  # each one later than the one before
    await asyncio.sleep(0.2)  # a window in which nothing may happen: no ping is due
    assert len(pinged) == 3
    assert Pings.of(loop, 0.2) is not pings
