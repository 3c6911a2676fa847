"""The Redis topologies of tests/topologies.py fail over as they should: a Sentinel set promotes its
replica when the master is killed, a Cluster promotes the replica of a killed master, and no
acknowledged write is lost on the way."""

from __future__ import annotations

import string
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.sentinel import Sentinel

from tests.support import timeout
from tests.topologies import ClusterSet, SentinelSet

pytestmark = [pytest.mark.processes]


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    with SentinelSet(tmp_path).start() as topology:
        yield topology


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterSet]:
    with ClusterSet(tmp_path, masters=3, replicas=1).start() as topology:
        yield topology


def test_sentinels_promote_the_replica_of_a_killed_master_with_its_data(sentinels: SentinelSet) -> None:
    master = sentinels.master_client()
    master.set("greeting", "hello")
    assert master.wait(1, 1000) == 1  # the replica has it

    started = time.monotonic()
    old = sentinels.kill_master()
    host, port = sentinels.wait_failover(old, within=15)
    assert time.monotonic() - started < timeout(15)

    assert port != old
    assert port in sentinels.servers
    assert sentinels.master_client().get("greeting") == "hello"
    discovery = Sentinel(sentinels.sentinels, socket_timeout=timeout(5))
    try:
        assert discovery.discover_master(sentinels.master_name) == (host, port)
    finally:
        discovery.close()


def test_cluster_promotes_the_replica_of_a_killed_master_with_its_keys(cluster: ClusterSet) -> None:
    client = cluster.client()
    keys = [f"{{{letter}}}key" for letter in string.ascii_lowercase]
    for key in keys:
        client.set(key, key.upper())
    assert {cluster.master_of_key(key) for key in keys} == set(cluster.masters())
    assert len(cluster.masters()) == 3

    victim = cluster.master_of_key("{a}key")
    node = cluster.node_client(victim)
    node.set("{a}key", "last")
    assert node.wait(1, 1000) == 1  # its replica has this write, and every one before it

    started = time.monotonic()
    cluster.kill(victim)
    heir = cluster.wait_failover(victim, within=15)
    assert time.monotonic() - started < timeout(15)

    assert heir != victim
    assert cluster.master_of_key("{a}key") == heir
    assert victim not in cluster.masters()
    assert cluster.node_client(heir).get("{a}key") == "last"
    expected = {key: key.upper() for key in keys} | {"{a}key": "last"}
    fresh = cluster.client()  # started from a live master: it learns the new layout
    assert {key: fresh.get(key) for key in keys} == expected
