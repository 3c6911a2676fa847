"""The janitor: keeps Redis tidy beside the relay instances.

Every ``RELAY_JANITOR_INTERVAL`` seconds, for every channel:

- applies ``RELAY_STREAM_MAX_AGE`` (and ``RELAY_STREAM_MAXLEN``) to channels that get no new
  messages, recording what it removed so that resuming consumers are told of the gap;
- removes consumers of consumer groups whose process is gone (no heartbeat) once they hold no
  pending entries (what they held is claimed by live readers first) and have not read for
  ``RELAY_JANITOR_REAP_IDLE_MS``; the check and the removal are one atomic script.

Several janitors may run: a lease in Redis (``relay:janitor:lease``) lets one work at a time; the
others wait, ready to take over when its lease expires. Run it with ``relay worker janitor`` or
``python -m workers.janitor``. It asks Redis only what :class:`app.broker.interface.Housekeeping`
offers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import ValidationError

from app import logs
from app.broker.housekeeping import RedisHousekeeping
from app.broker.interface import Housekeeping
from app.errors import BrokerError
from app.settings import Settings

log = logging.getLogger("relay.janitor")

_CHANNELS_PER_ROUND = 10_000


@dataclass
class Round:
    channels: int = 0
    trimmed: int = 0
    consumers_removed: int = 0


async def tidy(broker: Housekeeping, settings: Settings, keep_lease: Callable[[], Awaitable[bool]]) -> Round:
    """One pass over every channel (stopped early if the lease is lost meanwhile)."""
    done = Round()
    loop = asyncio.get_running_loop()
    renewed = loop.time()
    for info in await broker.channels(_CHANNELS_PER_ROUND):
        if loop.time() - renewed > settings.janitor_interval:
            if not await keep_lease():
                log.warning("lease lost during a round: stopping it")
                break
            renewed = loop.time()
        done.channels += 1
        if settings.stream_max_age is not None:
            removed = await broker.trim(info.name)
            if removed:
                log.info(
                    "channel %r: removed %d entries older than %gs",
                    info.name,
                    removed,
                    settings.stream_max_age,
                )
            done.trimmed += removed
        if info.groups:
            done.consumers_removed += await _remove_dead_consumers(broker, info.name, settings)
    return done


async def _remove_dead_consumers(broker: Housekeeping, channel: str, settings: Settings) -> int:
    removed = 0
    for consumer in await broker.group_consumers(channel):
        if consumer.pending or consumer.idle_ms < settings.janitor_reap_idle_ms:
            continue  # holds something, or read lately: alive, or its entries are not claimed yet
        if await broker.reap_consumer(channel, consumer.group, consumer.name, settings.janitor_reap_idle_ms):
            log.info(
                "channel %r group %r: removed consumer %r (gone, nothing pending)",
                channel,
                consumer.group,
                consumer.name,
            )
            removed += 1
    return removed


def main(settings: Settings, *, once: bool = False) -> int:
    """``relay worker janitor``: log as configured, run until stopped; the exit status."""
    logs.configure_process(settings.log_level, settings.log_format)
    if settings.embedded:
        sys.stderr.write("relay worker janitor: set RELAY_REDIS_URL (the embedded Redis is per process)\n")
        return 2
    asyncio.run(run(settings, once=once))
    return 0


async def run(settings: Settings, *, once: bool = False, broker: Housekeeping | None = None) -> None:
    """Work whenever this janitor holds the lease, until SIGTERM/SIGINT (or after one round)."""
    broker = broker or RedisHousekeeping(settings)
    me = f"{socket.gethostname()}-{os.getpid()}"
    stop = _stop_on_signals()
    lease_ms = int(settings.janitor_interval * 3000)

    async def keep() -> bool:
        return await broker.lease(me, lease_ms)

    holding = None
    try:
        while not stop.is_set():
            try:
                holds = await keep()
                if holds != holding:
                    log.info(
                        "janitor %s %s the lease", me, "holds" if holds else "waits: another janitor holds"
                    )
                    holding = holds
                if holds:
                    done = await tidy(broker, settings, keep)
                    log.info(
                        "round done: %d channel(s), %d entries trimmed, %d dead consumer(s) removed",
                        done.channels,
                        done.trimmed,
                        done.consumers_removed,
                    )
            except BrokerError as exc:
                log.warning("janitor round failed: %s", exc)
            if once:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.janitor_interval)
    finally:
        await broker.close()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


if __name__ == "__main__":
    try:
        configured = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"relay worker janitor: invalid settings:\n{exc}\n")
        sys.exit(2)
    sys.exit(main(configured, once="--once" in sys.argv[1:]))
