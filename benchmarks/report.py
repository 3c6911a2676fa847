"""The results: one row per (target, scenario), the relay ÷ baseline ratios, the ratios of rows of one
target that compare two ways of doing the same thing (M1, M2, E1), and the JSON document."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

RELAY = "relay"
CEILING_PCT = 90.0  # a loadgen worker this busy (of one core) measures itself, not the server


@dataclass
class Row:
    """The table's figures for one scenario on one target; None shows as "n/a"."""

    target: str
    scenario: str
    status: str = "ok"  # "ok", "n/a: <why>" or "failed: <why>"
    deliveries_per_s: float | None = None  # S3: acked messages per second
    p50_ms: float | None = None  # S3: ack latency; resume-storm: the live consumers
    p99_ms: float | None = None
    max_ms: float | None = None
    loss: int | None = None
    loss_pct: float | None = None
    cpu_us: float | None = None  # server CPU per delivery (S3: per acked message)
    rss_kb_per_conn: float | None = None  # M1, M2, E1: per subscription
    rss_kb_per_socket: float | None = None  # M1, M2, E1: per client connection (its subscriptions and all)
    redis_conns: int | None = None  # Redis connections added while the clients were connected
    loadgen_cpu_pct: float | None = None  # the busiest loadgen worker, % of one core
    notes: list[str] = field(default_factory=list)
    versus: str | None = None  # another scenario row of this target this one is divided by (M1, M2, E1)


@dataclass
class ScenarioResult:
    row: Row
    details: dict[str, Any] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"row": asdict(self.row), "details": self.details, "workers": self.workers}


# -- the table ---------------------------------------------------------------------------------------

_COLUMNS = (
    ("target", "target"),
    ("scenario", "scenario"),
    ("deliv/s", "deliveries_per_s"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("max ms", "max_ms"),
    ("loss", "loss"),
    ("srv CPU µs/deliv", "cpu_us"),
    ("RSS KB/conn", "rss_kb_per_conn"),
    ("RSS KB/sock", "rss_kb_per_socket"),
    ("Redis conns", "redis_conns"),
    ("loadgen CPU%", "loadgen_cpu_pct"),
)
_OPTIONAL = frozenset({"rss_kb_per_socket"})  # a column only when some row has a figure for it


def _shown(columns: tuple[tuple[str, str], ...], rows: list[Row]) -> tuple[tuple[str, str], ...]:
    """``columns`` without the optional ones no row has a figure for."""
    return tuple(
        (title, attr)
        for title, attr in columns
        if attr not in _OPTIONAL or any(getattr(row, attr) is not None for row in rows)
    )


def _cell(row: Row, attribute: str) -> str:
    if attribute == "loss":
        return _loss(row)
    value = getattr(row, attribute)
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if attribute == "loadgen_cpu_pct" and value >= CEILING_PCT:
        return f"{value:.0f}*"
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _loss(row: Row) -> str:
    if row.loss is None:
        return "n/a"
    if row.loss and row.loss_pct is not None:
        return f"{row.loss:,} ({row.loss_pct:.2f}%)"
    return f"{row.loss:,}"


def _table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i > 1 else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), rule, *(fmt(cells) for cells in lines)])


def render(results: list[ScenarioResult]) -> str:
    rows = [r.row for r in results]
    columns, figures = _shown(_COLUMNS, rows), _shown(_RATIOS, rows)
    header = [title for title, _ in columns] + ["notes"]
    lines = [[_cell(row, attr) for _, attr in columns] + [_notes(row)] for row in rows]
    parts = [_table(header, lines)]
    ratios = ratio_lines(rows)
    if ratios:
        parts.append("\nrelay ÷ baseline (same run; < 1 means the relay uses less / is lower):")
        parts.append(_table(["scenario", "baseline", *(t for t, _ in figures), "note"], ratios))
    versus = versus_lines(rows)
    if versus:
        parts.append(
            "\nwithin a target (same run, same instances; < 1 means the first uses less / is lower):"
        )
        parts.append(_table(["target", "scenario", "÷ scenario", *(t for t, _ in figures)], versus))
    parts.extend(_footnotes(rows))
    return "\n".join(parts)


def _notes(row: Row) -> str:
    notes = list(row.notes)
    if row.status != "ok":
        notes.insert(0, row.status)
    return "; ".join(notes)


def _footnotes(rows: list[Row]) -> list[str]:
    lines = []
    if any(r.loadgen_cpu_pct is not None and r.loadgen_cpu_pct >= CEILING_PCT for r in rows):
        lines.append(
            f"* a loadgen worker used >= {CEILING_PCT:.0f} % of a core: that row's rates and latencies are"
            " the client's ceiling, not the server's; compare server CPU µs per delivery instead."
        )
    if any(r.target.startswith("queue") for r in rows):
        lines.append(
            "queue-baseline: queue semantics (each message reaches ONE consumer; deliveries = messages),"
            " single instance: not comparable with fan-out figures."
        )
    if any(r.cpu_us is None and r.status == "ok" and r.scenario != "S4" for r in rows):
        lines.append("n/a server CPU / RSS: no server PIDs known (--server-pid) for that target.")
    return ["", *lines] if lines else []


# -- ratios ------------------------------------------------------------------------------------------

_RATIOS = (
    ("deliv/s", "deliveries_per_s"),
    ("p99", "p99_ms"),
    ("srv CPU µs/deliv", "cpu_us"),
    ("RSS KB/conn", "rss_kb_per_conn"),
    ("RSS KB/sock", "rss_kb_per_socket"),
    ("Redis conns", "redis_conns"),
)


def ratios(rows: list[Row]) -> list[dict[str, Any]]:
    """relay ÷ baseline, per scenario and figure, where both are known and the baseline is not zero."""
    relay = {r.scenario: r for r in rows if r.target == RELAY and r.status == "ok"}
    out = []
    for row in rows:
        mine = relay.get(row.scenario)
        if row.target == RELAY or mine is None or row.status != "ok":
            continue
        figures = {attr: _ratio(getattr(mine, attr), getattr(row, attr)) for _, attr in _RATIOS}
        out.append({"scenario": row.scenario, "baseline": row.target, **figures})
    return out


def _ratio(mine: float | None, theirs: float | None) -> float | None:
    if mine is None or theirs is None or theirs == 0:
        return None
    return mine / theirs


def ratio_lines(rows: list[Row]) -> list[list[str]]:
    figures = _shown(_RATIOS, rows)
    lines = []
    for entry in ratios(rows):
        cells = [entry["scenario"], entry["baseline"]]
        cells += ["n/a" if entry[a] is None else f"{entry[a]:.2f}x" for _, a in figures]
        cells.append("queue semantics: not like for like" if entry["baseline"].startswith("queue") else "")
        lines.append(cells)
    return lines


def versus_ratios(rows: list[Row]) -> list[dict[str, Any]]:
    """Each row with a ``versus`` ÷ that row of the same target, where both are known."""
    done = {(r.target, r.scenario): r for r in rows if r.status == "ok"}
    out = []
    for row in rows:
        other = done.get((row.target, row.versus)) if row.versus else None
        if other is None or row.status != "ok":
            continue
        figures = {attr: _ratio(getattr(row, attr), getattr(other, attr)) for _, attr in _RATIOS}
        out.append({"target": row.target, "scenario": row.scenario, "versus": row.versus, **figures})
    return out


def versus_lines(rows: list[Row]) -> list[list[str]]:
    figures = _shown(_RATIOS, rows)
    return [
        [entry["target"], entry["scenario"], entry["versus"]]
        + ["n/a" if entry[a] is None else f"{entry[a]:.2f}x" for _, a in figures]
        for entry in versus_ratios(rows)
    ]


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
