"""``python -m benchmarks [OPTIONS] [SCENARIO ...]``: options in, table out (and JSON on request)."""

from __future__ import annotations

import asyncio
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import click

from benchmarks import report, session
from benchmarks.scenarios import DEFAULT, FULL, QUICK, SCENARIOS, with_sizes

_HELP = f"""Benchmark a relay deployment (or local instances it starts) beside two baselines.

SCENARIO is one of {", ".join(SCENARIOS)}, or all. Without any: {" ".join(DEFAULT)}
(S2, max fan-out in 8 s steps, is long: it runs only when named or with "all").

\b
Targets, in turn:
  relay           --url ws://HOST:PORT (repeatable) or --spawn N local instances (default 2)
  xread-baseline  2 local uvicorn instances: XADD per message, XREAD BLOCK per consumer
  queue-baseline  1 local uvicorn instance: an asyncio.Queue (queue semantics)

Progress goes to stderr, the table to stdout. Only ever aim the load at machines you may load.
"""


def _relay_env(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for value in values:
        key, sep, setting = value.partition("=")
        if not sep or not key.startswith("RELAY_"):
            raise click.BadParameter(f"expected RELAY_NAME=VALUE, got {value!r}", param_hint="--relay-env")
        env[key] = setting
    return env


def _sizes(values: tuple[str, ...], quick: bool) -> dict[str, str]:
    sizes = {}
    for value in values:
        name, sep, size = value.partition("=")
        if not sep:
            raise click.BadParameter(f"expected NAME=VALUE, got {value!r}", param_hint="--param")
        sizes[name] = size
    try:
        with_sizes(QUICK if quick else FULL, sizes)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--param") from None
    return sizes


def _scenarios(names: tuple[str, ...]) -> list[str]:
    if not names:
        return list(DEFAULT)
    chosen: list[str] = []
    for name in names:
        for scenario in SCENARIOS if name == "all" else (name,):
            if scenario not in chosen:
                chosen.append(scenario)
    return chosen


@click.command(help=_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("names", metavar="[SCENARIO]...", nargs=-1, type=click.Choice([*SCENARIOS, "all"]))
@click.option(
    "--url",
    "urls",
    multiple=True,
    metavar="ws://HOST:PORT",
    help="An instance of the deployment (repeatable).",
)
@click.option(
    "--redis-url",
    default="redis://127.0.0.1:6379/0",
    show_default=True,
    help="The deployment's Redis: connections counted, the run's keys removed; local servers use it.",
)
@click.option(
    "--server-pid",
    "server_pids",
    multiple=True,
    type=int,
    metavar="PID",
    help="A local server process of --url, for CPU and RSS (repeatable).",
)
@click.option(
    "--spawn",
    type=click.IntRange(1, 16),
    default=None,
    help="Start N local relay instances (default 2 without --url).",
)
@click.option("--no-baselines", is_flag=True, help="Only the relay.")
@click.option(
    "--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Load-generator processes."
)
@click.option(
    "--quick",
    is_flag=True,
    help="Every scenario shrunk to a few seconds and a few connections: a smoke test.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write config, figures and raw worker results here.",
)
@click.option(
    "--relay-env",
    multiple=True,
    metavar="RELAY_X=V",
    help="A setting for spawned relay instances (repeatable).",
)
@click.option(
    "--param",
    "sizes",
    multiple=True,
    metavar="NAME=VALUE",
    help="A scenario size instead of its default (repeatable), e.g. mux_sockets=400; names in the README.",
)
def main(names: tuple[str, ...], urls: tuple[str, ...], redis_url: str, server_pids: tuple[int, ...], spawn: int | None, no_baselines: bool, workers: int, quick: bool, json_path: Path | None, relay_env: tuple[str, ...], sizes: tuple[str, ...]) -> None:  # fmt: skip
    if urls and spawn is not None:
        raise click.UsageError("--url and --spawn exclude each other")
    bad = [u for u in urls if not u.startswith("ws://")]
    if bad:
        raise click.BadParameter(f"expected ws://HOST:PORT, got {bad[0]!r}", param_hint="--url")
    options = session.Options(
        scenarios=_scenarios(names),
        urls=[u.rstrip("/") for u in urls],
        redis_url=redis_url,
        server_pids=list(server_pids),
        spawn=spawn or 2,
        baselines=not no_baselines,
        workers=workers,
        quick=quick,
        relay_env=_relay_env(relay_env),
        sizes=_sizes(sizes, quick),
    )
    _raise_file_limit()
    try:
        document = asyncio.run(_run(options))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM (cancels the run)
        click.echo("interrupted: every process this run started has been stopped", err=True)
        sys.exit(130)
    click.echo(document["table"])
    if json_path is not None:
        report.write_json(json_path, document)
        click.echo(f"\nJSON: {json_path}", err=True)
    failed = [r for r in document["results"] if r["row"]["status"].startswith("failed")]
    sys.exit(1 if failed else 0)


async def _run(options: session.Options) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await session.run(options)


def _raise_file_limit() -> None:
    """Thousands of connections: the soft limit up to the hard one (the workers inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
