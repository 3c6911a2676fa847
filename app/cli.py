"""The ``relay`` command. Every option can also be set with the ``RELAY_`` variable of the same name."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click
from pydantic import ValidationError

from app import __version__
from app.settings import Settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relay")
def main() -> None:
    """relay: a Redis-backed WebSocket relay. Producers publish, every consumer on every instance receives."""


@main.command()
@click.option(
    "--host", envvar="RELAY_HOST", help="Interface to listen on  [env RELAY_HOST; default 127.0.0.1]"
)
@click.option(
    "--port",
    envvar="RELAY_PORT",
    type=click.IntRange(0, 65535),
    help="Port to listen on  [env RELAY_PORT; default 8000]",
)
def serve(host: str | None, port: int | None) -> None:
    """Run one relay instance (uvicorn underneath).

    Redis comes from RELAY_REDIS_URL (or REDIS_URL); without one, the instance runs on an embedded
    in-process Redis: one instance, nothing shared, nothing kept.
    """
    from app.server.serve import serve as run

    settings = _settings_or_exit()
    overrides = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    run(settings.model_copy(update=overrides))


def _settings_or_exit() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        click.echo(f"relay: invalid settings:\n{exc}", err=True)
        sys.exit(2)


@main.group()
def worker() -> None:
    """Processes that run beside the instances (they need RELAY_REDIS_URL)."""


@worker.command()
@click.option("--once", is_flag=True, help="Do one round and exit (when this janitor gets the lease).")
def janitor(once: bool) -> None:
    """Keep Redis tidy: apply RELAY_STREAM_MAX_AGE to quiet channels, remove consumers of dead
    processes from consumer groups. Several may run; one works at a time (a lease in Redis)."""
    from workers import janitor as module

    sys.exit(module.main(_settings_or_exit(), once=once))


@worker.command()
@click.argument("target", metavar="MODULE:FUNCTION")
@click.option("--channel", required=True, help="Channel to consume.")
@click.option("--group", required=True, help="Consumer group (created at new messages if missing).")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Messages handled at once.",
)
@click.option("--from", "from_", default="$", show_default=True, help="Where a new group starts: $ or 0.")
@click.option(
    "--grace",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Seconds to finish work on SIGTERM.",
)
def run(target: str, channel: str, group: str, concurrency: int, from_: str, grace: float) -> None:
    """Call the async function MODULE:FUNCTION for each message of CHANNEL, through GROUP.

    Returning acknowledges the message; raising delivers it again after RELAY_GROUP_CLAIM_IDLE_MS,
    up to RELAY_GROUP_MAX_DELIVERIES times, then it goes to the dead letters. SIGTERM finishes what
    is in flight and exits.
    """
    import asyncio

    from app import logs
    from app.errors import ConfigError, ProtocolError
    from app.protocol import names
    from workers import runner

    settings = _settings_or_exit()
    logs.configure_process(settings.log_level, settings.log_format)
    try:
        names.check_channel(channel)
        names.check_group(group)
        position = names.parse_position(from_)
        handler = runner.load_handler(target)
        asyncio.run(
            runner.run(
                settings, handler, channel, group, concurrency=concurrency, position=position, grace=grace
            )
        )
    except (ConfigError, ProtocolError) as exc:
        click.echo(f"relay worker run: {exc}", err=True)
        sys.exit(2)


_URL = click.option(
    "--url",
    envvar="RELAY_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="The relay (an instance or the load balancer)  [env RELAY_URL]",
)
_TOKEN = click.option(
    "--token", envvar="RELAY_TOKEN", default=None, help="A JWT, when the relay wants one  [env RELAY_TOKEN]"
)


def _client_command(run: Callable[[], Coroutine[Any, Any, int]], url: str) -> None:
    """Run a client command: warnings (reconnects) on stderr, its exit status, 130 on Ctrl-C."""
    import asyncio
    import logging

    from app.client import commands

    problem = commands.check_url(url)
    if problem is not None:
        click.echo(f"relay: {problem}", err=True)
        sys.exit(commands.REFUSED)
    logging.basicConfig(level=logging.WARNING, format="relay: %(message)s")
    try:
        sys.exit(asyncio.run(run()))
    except KeyboardInterrupt:
        sys.exit(130)


@main.command()
@click.argument("channel")
@click.argument("message", required=False)
@_URL
@_TOKEN
@click.option(
    "--attempts",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Tries per message while unavailable.",
)
def publish(channel: str, message: str | None, url: str, token: str | None, attempts: int) -> None:
    """Publish MESSAGE (one JSON value) to CHANNEL, or, without MESSAGE, each line of standard
    input (NDJSON), in order. Prints one {"id": ...} line per message stored.

    Every message carries an idempotency key: one whose answer was lost is sent again and still
    stored once. Exit status: 0 all stored; 2 refused or a line that is not JSON; 3 the relay
    stayed unavailable. It stops at the first line it cannot store: the lines before it are stored.
    """
    from app.client import commands

    _client_command(lambda: commands.publish(url, channel, message, attempts, token), url)


@main.command()
@click.argument("channels", metavar="CHANNEL...", nargs=-1, required=True)
@_URL
@_TOKEN
@click.option(
    "--from",
    "from_",
    envvar="RELAY_FROM",
    default=None,
    help="Start after this id; 0 for everything retained  [env RELAY_FROM]",
)
@click.option(
    "--group",
    envvar="RELAY_GROUP",
    default=None,
    help="Consume as a member of this consumer group (acks each line; one channel)  [env RELAY_GROUP]",
)
@click.option(
    "--count",
    envvar="RELAY_COUNT",
    type=click.IntRange(1),
    default=None,
    help="Stop after this many messages  [env RELAY_COUNT]",
)
@click.option(
    "--give-up",
    envvar="RELAY_GIVE_UP",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Exit 3 after this many seconds without a connection (0: never)  [env RELAY_GIVE_UP]",
)
def tail(
    channels: tuple[str, ...],
    url: str,
    token: str | None,
    from_: str | None,
    group: str | None,
    count: int | None,
    give_up: float,
) -> None:
    """Print the messages of each CHANNEL as NDJSON, following them; reconnects and resumes by itself.

    Each line is {"id", "channel", "data"} (and "delivery" with --group). A gap in the channel is
    a line {"gap": {"from", "next"}}; with several channels, {"channel", "gap": {"from", "next"}}.
    Several channels are followed over one /ws connection, each resumed after its last message;
    --from applies to each, --count counts them all. Exit status: 0 after --count messages,
    2 when refused, 3 when the relay stays unreachable, 130 on Ctrl-C.
    """
    from app.client import commands

    unique = tuple(dict.fromkeys(channels))
    if len(unique) > 1 and group is not None:
        raise click.UsageError(f"--group follows one channel, got {len(unique)}")
    if len(unique) == 1:
        (channel,) = unique
        _client_command(lambda: commands.tail(url, channel, from_, group, count, give_up or None, token), url)
    else:
        _client_command(lambda: commands.tail_many(url, unique, from_, count, give_up or None, token), url)


@main.command()
@click.argument("channel")
@_URL
@_TOKEN
def presence(channel: str, url: str, token: str | None) -> None:
    """Print the clients present on CHANNEL, on every instance, as one JSON line:
    {"channel", "clients": [{"client", "user", "info"}, ...]}.

    A client is present while it has a subscription on CHANNEL over /ws. Exit status: 0 printed,
    2 refused (a bad channel, a token that may not subscribe to it), 3 the relay unreachable or
    unavailable.
    """
    from app.client import commands

    _client_command(lambda: commands.presence(url, channel, token), url)


@main.command()
@_URL
@_TOKEN
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def channels(url: str, token: str | None, as_json: bool) -> None:
    """List channels: name, length, first and last id, consumer groups."""
    from app.client import commands

    _client_command(lambda: commands.channels(url, as_json, token), url)
