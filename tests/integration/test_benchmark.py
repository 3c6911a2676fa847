"""The benchmark harness (``benchmarks/``) end to end, in its quick form: two relay instances it
starts itself, both baselines, S1, S3 and resume-storm; then M1 and M2 (one ``/ws`` socket for many
channels against a socket each) and E1 on the relay alone. The harness works under a key prefix of
its own run (``bench-<run id>``) and removes those keys when it is done."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import base_env
from tests.support import ROOT, timeout

pytestmark = [pytest.mark.redis, pytest.mark.processes]

SCENARIOS = ("S1", "S3", "resume-storm")
TARGETS = ("relay", "xread-baseline", "queue-baseline")


def run_benchmark(redis_url: str, json_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "benchmarks", "--quick", "--spawn", "2", "--redis-url", redis_url]
    return subprocess.run(
        [*command, "--json", str(json_path), *arguments],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=timeout(110),
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.timeout(150)
def test_quick_run_measures_every_target_and_the_relay_loses_nothing(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    json_path = tmp_path / "bench.json"
    result = run_benchmark(redis_url, json_path, *SCENARIOS)
    assert result.returncode == 0, result.stderr[-4000:]
    document = json.loads(json_path.read_text())
    found = {(r["target"], r["scenario"]): r for r in document["results"]}
    assert set(found) == {(t, s) for t in TARGETS for s in SCENARIOS}
    assert "| relay" in result.stdout  # the table

    check_fanout(found["relay", "S1"])
    check_ingest(found["relay", "S3"])
    check_resume_storm(found["relay", "resume-storm"], document["config"]["params"])
    for baseline in ("xread-baseline", "queue-baseline"):
        assert found[baseline, "S1"]["row"]["loss"] == 0
        assert found[baseline, "S1"]["row"]["deliveries_per_s"] > 0
        assert found[baseline, "S3"]["row"]["deliveries_per_s"] > 0
        assert found[baseline, "resume-storm"]["row"]["status"].startswith("n/a")
    assert any(r["baseline"] == "xread-baseline" and r["scenario"] == "S1" for r in document["ratios"])

    leftovers = list(redis_client.scan_iter(match=f"*bench-{document['run_id']}*", count=1000))
    assert leftovers == []


def check_fanout(result: dict[str, Any]) -> None:
    row, consumers = result["row"], result["details"]["groups"]["consumers"]
    assert row["status"] == "ok", row
    assert row["loss"] == 0
    assert row["deliveries_per_s"] > 0
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert row["cpu_us"] > 0  # the harness knows the PIDs of the instances it started
    assert consumers["unique"] == consumers["expected"] > 0
    assert consumers["dups"] == consumers["gaps"] == consumers["failed"] == 0
    assert len(result["workers"]) == 2


def check_ingest(result: dict[str, Any]) -> None:
    row, producers = result["row"], result["details"]["producers"]
    assert row["status"] == "ok", row
    assert row["deliveries_per_s"] > 0
    assert producers["acked"] > 0
    assert producers["errors"] == producers["unanswered"] == 0


def check_resume_storm(result: dict[str, Any], params: dict[str, Any]) -> None:
    row, groups = result["row"], result["details"]["groups"]
    assert row["status"] == "ok", row
    assert row["loss"] == 0
    storm, live = groups["storm"], groups["live"]
    assert storm["caught_up"] == storm["consumers"] == params["storm_consumers"]
    # every storm consumer got the whole backlog and everything live after it, in order
    assert storm["unique"] == storm["expected"] >= params["storm_consumers"] * params["backlog"]
    assert storm["gaps"] == storm["dups"] == live["gaps"] == live["dups"] == 0
    assert live["unique"] == live["expected"] > 0
    assert result["details"]["live_stall_max_ms"] > 0  # measured (its limit is the benchmark's to judge)


@pytest.mark.timeout(90)
def test_m1_compares_one_socket_for_many_channels_with_a_socket_each(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    json_path = tmp_path / "m1.json"
    result = run_benchmark(redis_url, json_path, "--no-baselines", "--param", "mux_rate=200", "M1")
    assert result.returncode == 0, result.stderr[-4000:]
    document = json.loads(json_path.read_text())
    params = document["config"]["params"]
    assert params["mux_rate"] * params["mux_s"] == 400  # --param applied
    _check_two_ways(
        document,
        result.stdout,
        "M1",
        params["mux_sockets"],
        params["mux_per_socket"],
        params["mux_channels"],
        400,
    )

    leftovers = list(redis_client.scan_iter(match=f"*bench-{document['run_id']}*", count=1000))
    assert leftovers == []


@pytest.mark.timeout(90)
def test_m2_measures_idle_memory_per_socket_and_delivery_over_many_slow_channels(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    json_path = tmp_path / "m2.json"
    result = run_benchmark(redis_url, json_path, "--no-baselines", "--param", "m2_s=2", "M2")
    assert result.returncode == 0, result.stderr[-4000:]
    document = json.loads(json_path.read_text())
    params = document["config"]["params"]
    messages = int(params["m2_channels"] * params["m2_channel_rate"] * params["m2_s"])
    assert messages == 100  # --param applied: 1 message per second per channel
    _check_two_ways(
        document,
        result.stdout,
        "M2",
        params["m2_sockets"],
        params["m2_per_socket"],
        params["m2_channels"],
        messages,
    )
    assert "RSS KB/sock" in result.stdout

    leftovers = list(redis_client.scan_iter(match=f"*bench-{document['run_id']}*", count=1000))
    assert leftovers == []


@pytest.mark.timeout(60)
def test_e1_compares_server_sent_events_with_websocket_consumers(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    json_path = tmp_path / "e1.json"
    result = run_benchmark(redis_url, json_path, "--no-baselines", "--param", "sse_s=1", "E1")
    assert result.returncode == 0, result.stderr[-4000:]
    document = json.loads(json_path.read_text())
    params = document["config"]["params"]
    found = {r["scenario"]: r for r in document["results"] if r["target"] == "relay"}
    assert set(found) == {"E1 SSE", "E1 WebSocket"}
    messages = int(params["sse_rate"] * params["sse_s"])
    assert messages == 100  # --param applied
    for scenario in ("E1 SSE", "E1 WebSocket"):
        row, details = found[scenario]["row"], found[scenario]["details"]
        consumers = details["groups"]["consumers"]
        assert row["status"] == "ok", row
        assert row["loss"] == 0
        assert details["messages_stored"] == messages
        assert (details["sockets"], details["subscriptions"]) == (params["sse_streams"],) * 2
        # every message reached every consumer of its channel, once, in order (SSE: by id too)
        assert (
            consumers["unique"]
            == consumers["expected"]
            == messages * params["sse_streams"] // params["sse_channels"]
        )
        assert consumers["dups"] == consumers["gaps"] == consumers["failed"] == consumers["foreign"] == 0
        assert consumers["disorder"] == consumers["dropped"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["cpu_us"] > 0
        assert row["rss_kb_per_conn"] is not None  # at this size mostly allocator noise
    (ratio,) = document["versus_ratios"]
    assert (ratio["scenario"], ratio["versus"]) == ("E1 SSE", "E1 WebSocket")
    assert ratio["cpu_us"] > 0
    assert "E1 WebSocket" in result.stdout

    leftovers = list(redis_client.scan_iter(match=f"*bench-{document['run_id']}*", count=1000))
    assert leftovers == []


def _check_two_ways(
    document: dict[str, Any],
    stdout: str,
    name: str,
    sockets: int,
    per_socket: int,
    channels: int,
    messages: int,
) -> None:
    """An M1-like result: ``sockets`` ``/ws`` sockets of ``per_socket`` subscriptions each, and
    the same subscriptions as a socket each, every message delivered to every subscription of its
    channel once and in order, and the ratio row between the two."""
    found = {r["scenario"]: r for r in document["results"] if r["target"] == "relay"}
    mux, single = f"{name} /ws", f"{name} /ws/consumer"
    assert set(found) == {mux, single}
    subscriptions = sockets * per_socket
    for scenario, held in ((mux, sockets), (single, subscriptions)):
        row, details = found[scenario]["row"], found[scenario]["details"]
        consumers = details["groups"]["consumers"]
        assert row["status"] == "ok", row
        assert row["loss"] == 0
        assert (details["sockets"], details["subscriptions"]) == (held, subscriptions)
        assert details["messages_stored"] == messages
        assert consumers["unique"] == consumers["expected"] == messages * subscriptions // channels
        assert consumers["dups"] == consumers["gaps"] == consumers["failed"] == consumers["foreign"] == 0
        assert row["cpu_us"] > 0
        # the idle memory of a socket, its subscriptions and all (at this size mostly allocator noise)
        assert row["rss_kb_per_socket"] == pytest.approx(row["rss_kb_per_conn"] * subscriptions / held)
    (ratio,) = document["versus_ratios"]
    assert (ratio["scenario"], ratio["versus"]) == (mux, single)
    assert ratio["cpu_us"] > 0
    assert single in stdout
