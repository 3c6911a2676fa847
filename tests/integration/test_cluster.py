"""Redis Cluster: channels on every shard, sharded Pub/Sub, resharding and a shard master's failover.

Real processes: clusters made with ``redis-cli --cluster create`` (tests/topologies.py), relay
instances with ``RELAY_REDIS_CLUSTER=true`` that know one node."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import redis
from redis.cluster import RedisCluster
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import RelayFactory, base_env
from tests.integration.load import SteadyProducer, Tail, check_delivery, tails
from tests.support import Instance, eventually, recv_json, recv_messages, timeout
from tests.topologies import ClusterSet

pytestmark = [pytest.mark.processes]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    """Three masters, no replicas: shared by the tests that kill nothing."""
    with ClusterSet(tmp_path_factory.mktemp("cluster")).start() as topology:
        yield topology


def on_cluster(relay: RelayFactory, cluster: ClusterSet, **settings: str) -> Instance:
    return relay(redis_url=cluster.url, redis_cluster="true", redis_timeout="1", **settings)


def spread(cluster: ClusterSet, prefix: str, per_shard: int) -> dict[str, int]:
    """Channel names, ``per_shard`` on each master: channel -> the port of its master."""
    masters = cluster.masters()
    found: dict[str, int] = {}
    for n in range(1000):
        name = f"ch{n}"
        owner = cluster.master_of_key(f"{prefix}:{{{name}}}")
        if sum(port == owner for port in found.values()) < per_shard:
            found[name] = owner
        if len(found) == per_shard * len(masters):
            return found
    raise AssertionError("could not spread channels over every shard")


def relay_clients(node: redis.Redis, instance: Instance, prefix: str) -> list[str]:
    """The names of the instance's connections to one node (``relay:<instance>:<role>``)."""
    del prefix
    name = instance.env["RELAY_INSTANCE_NAME"]
    return sorted(
        client["name"] for client in node.client_list() if client["name"].startswith(f"relay:{name}:")
    )


async def test_fan_out_resume_and_history_on_channels_of_every_shard(
    relay: RelayFactory, cluster: ClusterSet, prefix: str
) -> None:
    a, b = on_cluster(relay, cluster).start(), on_cluster(relay, cluster).start()
    channels = spread(cluster, prefix, per_shard=2)
    urls = [f"{b.ws}/ws/consumer/{channel}" for channel in channels]
    async with tails(*urls) as followers, httpx.AsyncClient(timeout=timeout(5)) as http:
        sent: dict[str, list[str]] = {}
        for channel in channels:
            for n in range(5):
                response = await http.post(f"{a.http}/channels/{channel}/messages", json={"n": n})
                assert response.status_code == 201, response.text
                sent.setdefault(channel, []).append(response.json()["id"])
        for channel, tail in zip(channels, followers, strict=True):
            await tail.wait_for(sent[channel][-1])
            assert tail.ids() == sent[channel], channel  # its own, once, in order: nothing else

        # announcements went over sharded Pub/Sub, on the owning shard only
        for port in cluster.masters():
            node = cluster.node_client(port)
            shard_channels = {name for name in node.pubsub_shardchannels(f"{prefix}:*")}
            owned = {f"{prefix}:{{{c}}}:live" for c, owner in channels.items() if owner == port}
            assert shard_channels == owned, port
            assert not [name for name in node.pubsub_channels() if name.endswith(":live")], port

        # resume after the second message of each channel, on the other instance
        for channel, ids in sent.items():
            async with connect(f"{a.ws}/ws/consumer/{channel}?from={ids[1]}") as ws:
                assert (await recv_json(ws))["type"] == "subscribed"
                assert [m["id"] for m in await recv_messages(ws, 3)] == ids[2:]
            history = await http.get(f"{a.http}/channels/{channel}/messages", params={"from": "0"})
            assert [m["id"] for m in history.json()["messages"]] == ids

        listed = await http.get(f"{b.http}/channels")
        names = {info["name"] for info in listed.json()["channels"]}
        assert set(channels) <= names  # found by scanning every shard


async def test_connections_per_shard_stay_few_whatever_the_consumers(
    relay: RelayFactory, cluster: ClusterSet, prefix: str
) -> None:
    a = on_cluster(relay, cluster).start()
    channels = list(spread(cluster, prefix, per_shard=4))
    nodes = {port: cluster.node_client(port) for port in cluster.masters()}

    async def publish_everywhere(http: httpx.AsyncClient) -> None:
        for channel in channels:
            assert (await http.post(f"{a.http}/channels/{channel}/messages", json=1)).status_code == 201

    async with httpx.AsyncClient(timeout=timeout(5)) as http:
        async with tails(f"{a.ws}/ws/consumer/{channels[0]}"):
            await publish_everywhere(http)
            few = {port: relay_clients(node, a, prefix) for port, node in nodes.items()}
        many = [f"{a.ws}/ws/consumer/{channel}" for channel in channels for _ in range(5)]
        async with tails(*many):
            await publish_everywhere(http)
            busy = {port: relay_clients(node, a, prefix) for port, node in nodes.items()}
    for port in nodes:
        assert few[port].count(f"relay:{a.env['RELAY_INSTANCE_NAME']}:sub") == 1, few[port]
        assert len(busy[port]) <= 8, busy[port]  # pub 1 (+1 that found the shards), read up to 6, sub 1
        assert len(busy[port]) <= len(few[port]) + 2, (few[port], busy[port])


async def test_groups_share_every_message_once_across_instances(
    relay: RelayFactory, cluster: ClusterSet, prefix: str
) -> None:
    a, b = on_cluster(relay, cluster).start(), on_cluster(relay, cluster).start()
    channel = next(iter(spread(cluster, prefix, per_shard=1)))
    got: list[str] = []
    async with (
        connect(f"{a.ws}/ws/consumer/{channel}?group=g&prefetch=4") as on_a,
        connect(f"{b.ws}/ws/consumer/{channel}?group=g&prefetch=4") as on_b,
        httpx.AsyncClient(timeout=timeout(5)) as http,
    ):
        for member in (on_a, on_b):
            assert (await recv_json(member))["type"] == "subscribed"
        sent = []
        for n in range(40):
            sent.append((await http.post(f"{a.http}/channels/{channel}/messages", json=n)).json()["id"])

        async def drain(member: ClientConnection) -> None:
            while len(got) < len(sent):
                frame = json.loads(await member.recv())
                got.append(frame["id"])
                await member.send(json.dumps({"type": "ack", "id": frame["id"]}))

        tasks = [asyncio.create_task(drain(member)) for member in (on_a, on_b)]
        await eventually(lambda: _at_least(got, len(sent)), 15, "every message taken by a member")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(got) == sorted(sent)
    assert len(got) == len(set(got))
    key = f"{prefix}:{{{channel}}}"
    client = cluster.client()
    await eventually(lambda: _no_pending(client, key), 10, "every ack stored")


async def test_presence_joins_leaves_and_lists_across_instances_on_every_shard(
    relay: RelayFactory, cluster: ClusterSet, prefix: str
) -> None:
    a, b = on_cluster(relay, cluster).start(), on_cluster(relay, cluster).start()
    channels = list(spread(cluster, prefix, per_shard=1))
    async with (
        connect(f"{a.ws}/ws") as watcher,
        connect(f"{b.ws}/ws") as present,
        httpx.AsyncClient(timeout=timeout(5)) as http,
    ):
        for ws in (watcher, present):
            assert (await recv_json(ws))["type"] == "connected"
        for channel in channels:
            await watcher.send(json.dumps({"type": "subscribe", "channel": channel, "presence": True}))
            assert (await recv_json(watcher))["type"] == "subscribed"
        for channel in channels:  # joins made on b's shards connections, heard on a's
            await present.send(json.dumps({"type": "subscribe", "channel": channel}))
            assert (await recv_json(present))["type"] == "subscribed"
            join = await recv_json(watcher)
            assert (join["type"], join["channel"]) == ("join", channel), join
            listed = await http.get(f"{a.http}/channels/{channel}/presence")
            assert len(listed.json()["clients"]) == 2, listed.text  # the watcher and the other
        await present.close()
        leaves = [await recv_json(watcher) for _ in channels]
        assert {(frame["type"], frame["channel"]) for frame in leaves} == {("leave", c) for c in channels}


def test_the_janitor_tidies_channels_on_every_shard(tmp_path: Path, cluster: ClusterSet, prefix: str) -> None:
    client = cluster.client()
    channels = list(spread(cluster, prefix, per_shard=1))
    for channel in channels:
        key = f"{prefix}:{{{channel}}}"
        client.xadd(key, {"data": "1"}, id="1-1")  # old: past any age limit
        client.xgroup_create(key, "g", id="0")
        for name in ("gone", "alive"):
            client.xreadgroup("g", name, {key: "0"}, count=1)  # made, holding nothing
    client.set(f"{prefix}:alive:alive", "1", px=60_000)  # in a slot of its own, on some shard
    env = base_env(
        redis_url=cluster.url,
        redis_cluster="true",
        key_prefix=prefix,
        janitor_reap_idle_ms="0",
        stream_max_age="60",
    )
    janitor = Instance(
        env, tmp_path / "janitor.log", [sys.executable, "-m", "app", "worker", "janitor", "--once"]
    )
    janitor.start(ready=False)
    try:
        assert janitor.wait_exit(30) == 0, janitor.log()
    finally:
        janitor.stop()
    for channel in channels:
        key = f"{prefix}:{{{channel}}}"
        assert {c["name"] for c in client.xinfo_consumers(key, "g")} == {"alive"}, channel
        assert client.xlen(key) == 0, channel  # the old entry went, on every shard


async def test_a_followed_channel_keeps_flowing_while_its_slot_moves(
    relay: RelayFactory, cluster: ClusterSet, prefix: str
) -> None:
    a, b = on_cluster(relay, cluster).start(), on_cluster(relay, cluster).start()
    channel, owner = next(iter(spread(cluster, prefix, per_shard=1).items()))
    live = f"{prefix}:{{{channel}}}:live"
    target = next(port for port in cluster.masters() if port != owner)
    async with tails(f"{a.ws}/ws/consumer/{channel}", f"{b.ws}/ws/consumer/{channel}") as followers:
        producer = SteadyProducer(b.ws, channel).start()
        await eventually(lambda: _acked(producer, 50), 15, "acks before the move")
        await asyncio.to_thread(cluster.move_slot, cluster.slot_of(live), target)
        moved_at = len(producer.acked)
        await eventually(lambda: _acked(producer, moved_at + 50), 15, "acks after the move")
        await producer.stop()
        await _all_delivered(followers, producer)
        node = cluster.node_client(target)
        await eventually(lambda: _subscribed_on(node, live), 10, "subscribed on its new shard")
        assert live not in cluster.node_client(owner).pubsub_shardchannels(live)


async def test_a_shard_master_killed_under_load_loses_no_acked_message(
    relay: RelayFactory, tmp_path: Path, prefix: str
) -> None:
    # two replicas per master: once one is promoted, the other replicates from it, so acks with
    # RELAY_ACK_REPLICAS=1 go on after the failover
    with ClusterSet(tmp_path / "cluster", masters=3, replicas=2).start() as cluster:
        a = on_cluster(relay, cluster, ack_replicas="1").start()
        b = on_cluster(relay, cluster, ack_replicas="1").start()
        # the channel on the node the instances were told of (RELAY_REDIS_URL): they must find
        # the cluster through the others
        seed = int(cluster.url.rsplit(":", 1)[1].split("/")[0])
        placed = spread(cluster, prefix, per_shard=1)
        channel = next(c for c, port in placed.items() if port == seed)
        quiet = next(c for c, port in placed.items() if port != seed)
        owner = seed
        async with tails(f"{a.ws}/ws/consumer/{channel}", f"{b.ws}/ws/consumer/{channel}") as followers:
            producer = SteadyProducer(b.ws, channel).start()
            elsewhere = SteadyProducer(a.ws, quiet).start()
            await eventually(lambda: _acked(producer, 100), 20, "acks before the failover")
            await asyncio.to_thread(cluster.kill, owner)
            await asyncio.to_thread(cluster.wait_failover, owner)
            failed_over_at = len(producer.acked)
            await eventually(lambda: _acked(producer, failed_over_at + 100), 30, "acks after the failover")
            await producer.stop()
            await elsewhere.stop()
            await _all_delivered(followers, producer)
        stored = {entry_id for entry_id, _ in cluster.client().xrange(f"{prefix}:{{{channel}}}")}
        lost = set(producer.acked.values()) - stored
        assert not lost, f"{len(lost)} acked message(s) missing after the failover"
        assert {code for _, code in producer.refused} <= {"unavailable"}, producer.refused
        assert producer.refused, "the failover should have refused some publishes meanwhile"
        assert elsewhere.acked, "a channel on a healthy shard went on"
        for instance in (a, b):
            await eventually(lambda i=instance: _ready(i), 15, "/readyz 200 after the failover")


async def _all_delivered(followers: list[Tail], producer: SteadyProducer) -> None:
    last = max(producer.acked.values(), key=lambda i: tuple(map(int, i.split("-"))))
    for tail in followers:
        await tail.wait_for(last)
        check_delivery(tail, producer.acked)


async def _acked(producer: SteadyProducer, count: int) -> bool:
    assert producer.running, "the producer stopped"
    return len(producer.acked) >= count


async def _at_least(got: list[str], count: int) -> bool:
    return len(got) >= count


async def _no_pending(client: RedisCluster, key: str) -> bool:
    return int(client.xpending(key, "g")["pending"]) == 0


async def _subscribed_on(node: redis.Redis, live: str) -> bool:
    return live in node.pubsub_shardchannels(live)


async def _ready(instance: Instance) -> bool:
    return await asyncio.to_thread(instance.readyz) == 200
