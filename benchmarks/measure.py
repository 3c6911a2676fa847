"""What the harness reads besides the clients: server processes (/proc) and Redis (INFO).

Server CPU is utime + stime of each given process (children are not counted: every server here is
one process), RSS is VmRSS. Either is None when a process cannot be read (gone, or not local).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import redis

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class ServerSnapshot:
    """CPU seconds and RSS summed over the target's server processes (None: not known)."""

    cpu_s: float | None
    rss_kb: int | None

    @classmethod
    def take(cls, pids: list[int]) -> ServerSnapshot:
        cpus = [cpu_seconds(pid) for pid in pids]
        rsses = [rss_kb(pid) for pid in pids]
        return cls(
            cpu_s=sum(c for c in cpus if c is not None) if pids and None not in cpus else None,
            rss_kb=sum(r for r in rsses if r is not None) if pids and None not in rsses else None,
        )


def delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


class RedisProbe:
    """Connection count and CPU of the Redis the targets use; removal of the run's own keys."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def clients(self) -> int | None:
        try:
            return int(self._client.info("clients")["connected_clients"])
        except (redis.RedisError, OSError):
            return None

    def cpu_seconds(self) -> float | None:
        try:
            info = self._client.info("cpu")
        except (redis.RedisError, OSError):
            return None
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def delete_matching(self, pattern: str, limit: int = 1_000_000) -> int:
        """Delete the keys matching ``pattern`` (SCAN, never KEYS), at most ``limit``."""
        deleted = 0
        batch: list[bytes] = []
        for key in self._client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) == 500:
                deleted += int(self._client.delete(*batch))
                batch.clear()
            if deleted + len(batch) >= limit:
                break
        if batch:
            deleted += int(self._client.delete(*batch))
        return deleted

    def close(self) -> None:
        self._client.close()
