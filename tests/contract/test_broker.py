"""What every broker guarantees (app/broker.py), on the embedded Redis and on a real one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from app.broker.interface import Published, PublishRequest
from app.broker.streams import RedisBroker
from app.errors import BrokerUnavailable, StorageError
from app.protocol import streamid
from app.settings import Settings
from tests.contract.conftest import Recorder, raw
from tests.support import free_port

OpenBroker = Callable[..., Any]


def ids_of(result: Published | Exception) -> list[str]:
    assert isinstance(result, Published), result
    return result.ids


async def test_publish_stores_in_order_and_returns_the_ids(open_broker: OpenBroker) -> None:
    broker = await open_broker(Recorder())
    results = await broker.publish(
        [PublishRequest("c", ['{"n":1}', '"two"']), PublishRequest("d", ["3"]), PublishRequest("c", ["[4]"])]
    )
    c_ids = ids_of(results[0]) + ids_of(results[2])
    page = await broker.read("c", streamid.ZERO, until=None, count=10)
    assert page.entries == list(zip(c_ids, ['{"n":1}', '"two"', "[4]"], strict=True))
    assert [streamid.parse(i) for i in c_ids] == sorted(streamid.parse(i) for i in c_ids)
    stored = await raw(broker).xrange(f"{broker.keys.prefix}:{{c}}")
    assert [fields for _, fields in stored] == [{"data": '{"n":1}'}, {"data": '"two"'}, {"data": "[4]"}]


async def test_announcements_chain_each_batch_to_the_previous_entry(open_broker: OpenBroker) -> None:
    recorder = Recorder()
    broker = await open_broker(recorder)
    assert await broker.follow("c") == streamid.ZERO
    first = ids_of((await broker.publish([PublishRequest("c", ["1", "2"])]))[0])
    second = ids_of((await broker.publish([PublishRequest("c", ["3"])]))[0])
    await recorder.wait_for(lambda: len(recorder.announcements) == 2)
    assert recorder.announcements == [
        ("c", "0-0", [(first[0], "1"), (first[1], "2")]),
        ("c", first[1], [(second[0], "3")]),
    ]
    assert await broker.follow("c") == streamid.parse(second[0])  # follow reports the last entry


async def test_unfollowed_channels_are_not_announced(open_broker: OpenBroker) -> None:
    recorder = Recorder()
    broker = await open_broker(recorder)
    await broker.follow("kept")
    await broker.follow("dropped")
    broker.unfollow("dropped")
    await broker.publish([PublishRequest("dropped", ["1"]), PublishRequest("kept", ["2"])])
    await recorder.wait_for(lambda: len(recorder.announcements) >= 1)
    assert [channel for channel, _, _ in recorder.announcements] == ["kept"]


async def test_read_after_until_and_count(open_broker: OpenBroker) -> None:
    broker = await open_broker(Recorder())
    ids = ids_of((await broker.publish([PublishRequest("c", [str(n) for n in range(10)])]))[0])
    sid = [streamid.parse(i) for i in ids]
    page = await broker.read("c", sid[2], until=sid[6], count=100)
    assert [i for i, _ in page.entries] == ids[3:7]
    page = await broker.read("c", sid[2], until=None, count=3)
    assert [i for i, _ in page.entries] == ids[3:6]
    assert page.exists
    assert page.lost_until is None
    missing = await broker.read("nothing-here", streamid.ZERO, until=None, count=3)
    assert (missing.entries, missing.exists) == ([], False)


async def test_retention_by_length_leaves_a_watermark_for_gaps(open_broker: OpenBroker) -> None:
    broker = await open_broker(Recorder(), stream_maxlen=10)
    ids = []
    for n in range(40):
        ids += ids_of((await broker.publish([PublishRequest("c", [str(n)])]))[0])
    everything = await broker.read("c", streamid.ZERO, until=None, count=100, report_gap=False)
    retained = [i for i, _ in everything.entries]
    assert 10 <= len(retained) <= 11
    assert retained == ids[-len(retained) :]
    edge = streamid.parse(ids[-len(retained) - 1])  # the newest entry removed
    assert (await broker.read("c", streamid.parse(ids[0]), until=None, count=100)).lost_until == edge
    assert (await broker.read("c", edge, until=None, count=100)).lost_until is None
    assert (await broker.read("c", streamid.ZERO, until=None, count=1, report_gap=False)).lost_until is None


async def test_idempotency_key_stores_once_per_channel(open_broker: OpenBroker) -> None:
    broker = await open_broker(Recorder())
    first = (await broker.publish([PublishRequest("c", ["1"], "order-17")]))[0]
    again = (await broker.publish([PublishRequest("c", ["1"], "order-17")]))[0]
    elsewhere = (await broker.publish([PublishRequest("d", ["1"], "order-17")]))[0]
    assert isinstance(first, Published)
    assert isinstance(again, Published)
    assert isinstance(elsewhere, Published)
    assert (first.replayed, again.replayed, again.ids) == (False, True, first.ids)
    assert not elsewhere.replayed
    assert len((await broker.read("c", streamid.ZERO, until=None, count=10)).entries) == 1


async def test_a_key_of_the_wrong_type_fails_only_its_request(open_broker: OpenBroker) -> None:
    broker = await open_broker(Recorder())
    await raw(broker).set(f"{broker.keys.prefix}:{{taken}}", "not a stream")
    results = await broker.publish([PublishRequest("taken", ["1"]), PublishRequest("fine", ["2"])])
    assert isinstance(results[0], StorageError)
    assert isinstance(results[1], Published)


async def test_publishing_survives_a_script_flush(open_broker: OpenBroker) -> None:
    broker = await open_broker(Recorder())
    ids_of((await broker.publish([PublishRequest("c", ["1"])]))[0])
    await raw(broker).script_flush()
    assert len(ids_of((await broker.publish([PublishRequest("c", ["2"])]))[0])) == 1


async def test_channels_lists_streams_with_their_length_and_last_id(open_broker: OpenBroker) -> None:
    broker = await open_broker(Recorder())
    b_ids = ids_of((await broker.publish([PublishRequest("b", ["1", "2"])]))[0])
    (await broker.publish([PublishRequest("a", ["1"], "idem")]))  # its idempotency key is no channel
    infos = await broker.channels(100)
    assert [(i.name, i.length) for i in infos] == [("a", 1), ("b", 2)]
    assert infos[1].last_id == b_ids[-1]
    assert infos[1].first_id == b_ids[0]
    assert [i.name for i in await broker.channels(1)] == ["a"]


async def test_an_unreachable_redis_is_reported_not_waited_on() -> None:
    settings = Settings(_env_file=None, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=1)  # type: ignore[call-arg]
    broker = RedisBroker(settings)
    await broker.start(Recorder())
    try:
        with pytest.raises(BrokerUnavailable):
            await broker.ping()
        with pytest.raises(BrokerUnavailable):
            await broker.publish([PublishRequest("c", ["1"])])
        with pytest.raises(BrokerUnavailable):
            await broker.follow("c")
        with pytest.raises(BrokerUnavailable):
            await broker.read("c", streamid.ZERO, until=None, count=1)
    finally:
        await broker.close()


async def test_thousands_of_positions_asked_at_once_are_all_answered(open_broker: OpenBroker) -> None:
    """A storm of subscriptions: every new channel's position is asked for at the same moment,
    far more than the read pool has connections, each caller waiting no longer than the timeout."""
    broker = await open_broker(Recorder(), redis_timeout=0.1)
    published = {
        f"p{n}": ids_of((await broker.publish([PublishRequest(f"p{n}", ["1"])]))[0])[0] for n in range(5)
    }
    channels = [*published, *(f"empty{n}" for n in range(3000))]
    found = await asyncio.gather(*(broker.last_id(channel) for channel in channels))
    expected = [streamid.parse(published[c]) if c in published else streamid.ZERO for c in channels]
    assert found == expected
