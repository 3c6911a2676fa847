"""A fixed-resolution latency histogram: 0.1 ms bins, constant cost per sample, mergeable across processes.

Samples are kept as counts per bin, never as a list, so a worker can record millions of latencies in
a few megabytes. Samples beyond the range land in the last bin; the exact maximum is kept apart.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping

RESOLUTION_MS = 0.1
RANGE_MS = 60_000.0
_BINS = int(RANGE_MS / RESOLUTION_MS) + 1


class Histogram:
    """Latencies in milliseconds."""

    __slots__ = ("_counts", "count", "max_ms")

    def __init__(self) -> None:
        self._counts = array("Q", bytes(8 * _BINS))
        self.count = 0
        self.max_ms = 0.0

    def add(self, ms: float) -> None:
        index = int(ms * 10.0)  # 1 / RESOLUTION_MS, spelled out: this runs once per message
        if index < 0:
            index = 0
        elif index >= _BINS:
            index = _BINS - 1
        self._counts[index] += 1
        self.count += 1
        if ms > self.max_ms:
            self.max_ms = ms

    def to_sparse(self) -> dict[str, int]:
        """Non-empty bins as ``{bin index: count}`` (JSON object keys are strings)."""
        return {str(index): count for index, count in enumerate(self._counts) if count}


class Summary:
    """Percentiles of one or more merged sparse histograms (the parent's side)."""

    def __init__(self, sparse: Iterable[Mapping[str, int]], max_ms: float) -> None:
        merged: dict[int, int] = {}
        for bins in sparse:
            for index, count in bins.items():
                merged[int(index)] = merged.get(int(index), 0) + count
        self._bins = sorted(merged.items())
        self.count = sum(merged.values())
        self.max_ms = max_ms

    def percentile(self, fraction: float) -> float | None:
        """The upper edge of the bin holding the ``fraction`` quantile; None without samples."""
        if not self.count:
            return None
        rank = fraction * self.count
        seen = 0
        for index, count in self._bins:
            seen += count
            if seen >= rank:
                return min(round((index + 1) * RESOLUTION_MS, 1), self.max_ms)
        return self.max_ms
