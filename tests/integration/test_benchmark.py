"""The benchmark harness (``benchmarks/``) end to end, in its quick form: two relay instances it
starts itself, both baselines, S1, S3 and resume-storm. The harness works under a key prefix of its
own run (``bench-<run id>``) and removes those keys when it is done."""

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


def run_benchmark(redis_url: str, json_path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "benchmarks", "--quick", "--spawn", "2", "--redis-url", redis_url]
    return subprocess.run(
        [*command, "--json", str(json_path), *SCENARIOS],
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
    result = run_benchmark(redis_url, json_path)
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
