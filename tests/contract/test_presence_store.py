"""What the broker guarantees for presence (app/broker/interface.py, PresenceStore), on the
embedded Redis and on a real one: entries count in their process's epoch only, joins are announced
once, leaves always, and a list removes a dead process's entries unless they changed meanwhile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.broker.interface import PresenceChange
from app.broker.streams import RedisBroker
from app.protocol import frames
from tests.contract.conftest import Recorder, raw

OpenBroker = Callable[..., Any]


def entry(client: str) -> str:
    return f'{{"client":"{client}","user":null,"info":null}}'


def join(client: str, epoch: int = 1, channel: str = "room") -> PresenceChange:
    return PresenceChange(channel, client, entry(client), frames.joined(channel, entry(client)), True, epoch)


def leave(client: str, channel: str = "room") -> PresenceChange:
    return PresenceChange(channel, client, entry(client), frames.left(channel, entry(client)), False)


async def test_entries_count_while_their_process_beats_in_their_epoch(open_broker: OpenBroker) -> None:
    broker: RedisBroker = await open_broker(Recorder())
    assert await broker.presence_beat("aaa", "1 one", 60_000) is None  # nothing before
    assert await broker.presence_beat("bbb", "1 two", 60_000) is None
    assert await broker.presence_change([join("aaa.1"), join("aaa.2"), join("bbb.1")]) == [None] * 3
    assert await broker.presence_list("room") == {c: entry(c) for c in ("aaa.1", "aaa.2", "bbb.1")}

    assert await broker.presence_beat("aaa", "2 one", 60_000) == "1 one"  # a new epoch for aaa
    await broker.presence_change([join("aaa.2", epoch=2)])  # written again in it; aaa.1 is not
    assert await broker.presence_list("room") == {c: entry(c) for c in ("aaa.2", "bbb.1")}
    stored = await raw(broker).hgetall(f"{broker.keys.prefix}:{{room}}:presence")
    assert stored == {"aaa.2": f"2 {entry('aaa.2')}", "bbb.1": f"1 {entry('bbb.1')}"}  # aaa.1 pruned

    await broker.presence_end("bbb")  # a process that stops: none of its entries counts any more
    assert await broker.presence_list("room") == {"aaa.2": entry("aaa.2")}


async def test_a_join_is_announced_once_and_a_leave_always(open_broker: OpenBroker) -> None:
    recorder = Recorder()
    broker: RedisBroker = await open_broker(recorder)
    await broker.follow("room")
    await broker.presence_beat("aaa", "1 one", 60_000)
    await broker.presence_change([join("aaa.1"), join("aaa.1"), join("aaa.1", epoch=2)])  # retried
    await broker.presence_change([leave("aaa.1"), leave("aaa.1")])
    await recorder.wait_for(lambda: len(recorder.presence) >= 3)
    joined = frames.joined("room", entry("aaa.1"))
    left = frames.left("room", entry("aaa.1"))
    assert recorder.presence == [("room", "aaa.1", joined), ("room", "aaa.1", left), ("room", "aaa.1", left)]
    assert await broker.presence_list("room") == {}


async def test_a_list_does_not_remove_an_entry_written_again_since_it_read_it(
    open_broker: OpenBroker,
) -> None:
    """The race of a lister with a process whose heartbeat was lost and came back: the lister
    found the old entry dead, the process wrote it again in its new epoch; the lister's tidying
    must leave the new one (presence_prune.lua compares before it deletes)."""
    broker: RedisBroker = await open_broker(Recorder())
    key = f"{broker.keys.prefix}:{{room}}:presence"
    await broker.presence_change([join("aaa.1")])  # epoch 1, and no heartbeat: dead
    stale = f"1 {entry('aaa.1')}"
    await raw(broker).hset(key, "aaa.1", f"2 {entry('aaa.1')}")  # written again meanwhile
    assert await broker._prune(keys=[key], args=["aaa.1", stale]) == 0
    assert await raw(broker).hget(key, "aaa.1") == f"2 {entry('aaa.1')}"
    assert await broker._prune(keys=[key], args=["aaa.1", f"2 {entry('aaa.1')}"]) == 1


async def test_a_change_redis_refuses_for_good_fails_alone(open_broker: OpenBroker) -> None:
    broker: RedisBroker = await open_broker(Recorder())
    await raw(broker).set(f"{broker.keys.prefix}:{{taken}}:presence", "not a hash")
    results = await broker.presence_change([join("aaa.1", channel="taken"), join("aaa.2")])
    assert results[0] is not None
    assert "WRONGTYPE" in results[0]
    assert results[1] is None
