"""The ``relay`` command. Every option can also be set with the ``RELAY_`` variable of the same name."""

from __future__ import annotations

import sys

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
    from app.server import serve as run

    try:
        settings = Settings()
    except ValidationError as exc:
        click.echo(f"relay: invalid settings:\n{exc}", err=True)
        sys.exit(2)
    overrides = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    run(settings.model_copy(update=overrides))
