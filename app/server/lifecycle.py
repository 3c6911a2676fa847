"""The running parts of one instance (broker, hub, groups, publisher, presence) and its drain.

Start-up builds them in order and shutdown closes them in reverse. Draining (SIGTERM under
``relay serve``) goes: ``/readyz`` answers 503 and new connections are refused at once; after
``RELAY_DRAIN_GRACE`` seconds every connection is asked to close (consumers get 1012, producers
first receive the replies to every frame already read); after at most ``RELAY_DRAIN_TIMEOUT``
more seconds uvicorn closes whatever is left and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import Protocol

from app import metrics
from app.broker.streams import RedisBroker
from app.fanout.hub import Hub
from app.groups.manager import GroupManager
from app.ingest.publisher import Publisher
from app.presence.tracker import Presence
from app.protocol.codes import Close
from app.server.auth import Authenticator
from app.settings import Settings

log = logging.getLogger("relay")

DRAIN_REASON = "instance draining: reconnect and resume with from=<last id>"


class Closable(Protocol):
    def request_close(self, code: int, reason: str) -> None: ...


class Relay:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.auth = Authenticator(settings)  # first: a bad key stops start-up before any connection
        self.broker = RedisBroker(settings)
        self.hub = Hub(self.broker, buffer=settings.consumer_buffer)
        self.groups = GroupManager(self.broker, self.hub, settings)
        self.publisher = Publisher(self.broker)
        self.presence = Presence(self.broker, settings)
        self.draining = False
        self._connections: set[Closable] = set()
        self._no_connections = asyncio.Event()
        self._no_connections.set()

    async def start(self) -> None:
        if self.settings.embedded:
            log.warning(
                "\n%s\nRELAY_REDIS_URL is not set: running on an EMBEDDED in-process Redis (fakeredis).\n"
                "One instance only, nothing shared with other instances, nothing kept after exit.\n"
                "Good for a first try and for tests; never for production.\n%s",
                "!" * 78,
                "!" * 78,
            )
        else:
            log.info(
                "Redis: %s (key prefix %r)", self.settings.redis_url_for_display(), self.settings.key_prefix
            )
        if not self.settings.tokens_required:
            log.warning(
                "no RELAY_JWT_SECRET / RELAY_JWT_PUBLIC_KEY: anyone who reaches this instance may publish"
                " and consume every channel"
            )
        await self.broker.start(self.hub)
        self.groups.start()
        self.publisher.start()
        self.presence.start()
        metrics.BUFFERED.set_function(self.hub.buffered)

    async def stop(self) -> None:
        self.begin_drain()
        await self.publisher.close()
        await self.presence.close(self.settings.redis_timeout)  # the leaves of the closed connections
        await self.groups.close()
        self.hub.close()
        await self.broker.close()

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining = True
            metrics.DRAINING.set(1)

    async def drain(self) -> None:
        """Refuse new work, wait the grace period, then close every connection (bounded)."""
        self.begin_drain()
        grace, timeout = self.settings.drain_grace, self.settings.drain_timeout
        log.info("draining: /readyz is 503; closing %d connection(s) in %.1fs", len(self._connections), grace)
        await asyncio.sleep(grace)
        for connection in list(self._connections):
            connection.request_close(Close.RESTART, DRAIN_REASON)
        with suppress(TimeoutError):
            await asyncio.wait_for(self._no_connections.wait(), timeout)
        if self._connections:
            log.warning("drain timeout: %d connection(s) still open, closing them", len(self._connections))

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def track(self, connection: Closable) -> None:
        """Count a connection for the drain until ``untrack``: call both around its life, in a
        ``try``/``finally`` (not a context manager: its generator and frame would stay alive as
        long as the connection, 0.3 KB each)."""
        self._connections.add(connection)
        self._no_connections.clear()

    def untrack(self, connection: Closable) -> None:
        self._connections.discard(connection)
        if not self._connections:
            self._no_connections.set()
