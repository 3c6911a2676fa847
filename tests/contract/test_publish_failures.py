"""A publish whose reply is lost: reported as not stored, and never stored twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import redis

from app.broker import clients
from app.broker.interface import PublishRequest
from app.broker.line import Line
from app.broker.streams import RedisBroker
from app.errors import BrokerUnavailable
from app.settings import Settings
from tests.contract.conftest import Recorder
from tests.support import timeout

pytestmark = [pytest.mark.redis]


class ReplyCutter:
    """A TCP proxy in front of Redis that, once armed, drops the connection that sends the next
    EVALSHA just before Redis's reply reaches the client: the script ran, the client cannot know."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.armed = False
        self.cut = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.upstream)
        victim = False

        async def up() -> None:
            nonlocal victim
            while data := await client_r.read(65536):
                if self.armed and b"EVALSHA" in data:
                    self.armed, victim = False, True
                server_w.write(data)
                await server_w.drain()

        async def down() -> None:
            while data := await server_r.read(65536):
                if victim:
                    client_w.transport.abort()
                    server_w.close()
                    self.cut.set()
                    return
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        client_w.close()
        server_w.close()


@pytest.fixture
async def cutter(redis_url: str) -> AsyncIterator[ReplyCutter]:
    parts = urlsplit(redis_url)
    proxy = ReplyCutter(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_a_lost_reply_is_unavailable_and_the_message_is_stored_once(
    cutter: ReplyCutter, prefix: str, redis_client: redis.Redis
) -> None:
    settings = Settings(_env_file=None, redis_url=f"redis://127.0.0.1:{cutter.port}/0", key_prefix=prefix)  # type: ignore[call-arg]
    broker = RedisBroker(settings)
    await broker.start(Recorder())
    try:
        await broker.publish([PublishRequest("c", ['"first"'])])  # connection up, script loaded
        cutter.armed = True
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(broker.publish([PublishRequest("c", ['"second"'])]), timeout(10))
        assert cutter.cut.is_set()
    finally:
        await broker.close()
    stored = [fields["data"] for _, fields in redis_client.xrange(f"{prefix}:{{c}}")]
    assert stored == ['"first"', '"second"']  # the script ran once: not retried behind our back


async def test_a_connection_the_server_closed_while_idle_is_made_again_before_the_next_publish(
    prefix: str, redis_url: str, redis_client: redis.Redis
) -> None:
    """Redis restarted, its idle ``timeout``, a proxy: the publisher's held connection is found
    closed before anything is sent on it, and the publish goes through on a new one."""
    settings = Settings(_env_file=None, redis_url=redis_url, key_prefix=prefix, instance_name=prefix)  # type: ignore[call-arg]
    broker = RedisBroker(settings)
    await broker.start(Recorder())
    try:
        first = await broker.publish([PublishRequest("c", ['"first"'])])
        assert not isinstance(first[0], Exception), first
        ours = [c["id"] for c in redis_client.client_list() if c["name"] == f"relay:{prefix}:pub"]
        assert len(ours) == 1, ours
        assert redis_client.client_kill_filter(_id=ours[0]) == 1
        async with asyncio.timeout(timeout(5)):  # the EOF reaches the idle connection's reader
            while not _closed(broker):  # noqa: ASYNC110 - for state only a poll can see
                await asyncio.sleep(0.01)
        second = await broker.publish([PublishRequest("c", ['"second"'])])
        assert not isinstance(second[0], Exception), second
    finally:
        await broker.close()
    stored = [fields["data"] for _, fields in redis_client.xrange(f"{prefix}:{{c}}")]
    assert stored == ['"first"', '"second"']


def _closed(broker: RedisBroker) -> bool:
    """Whether the publisher's held connection has seen the server close it."""
    connection = broker._line._connection  # type: ignore[union-attr]
    reader = getattr(connection, "_reader", None)
    return reader is None or reader.at_eof()


async def test_a_round_trip_cut_by_its_deadline_leaves_no_reply_for_the_next(redis_url: str) -> None:
    """The deadline passes while Redis is still busy with a command: the next round trip on the
    line reads its own reply, not the late one."""
    client = clients.for_settings(
        Settings(_env_file=None, redis_url=redis_url)  # type: ignore[call-arg]
    ).make("pub", 1, 0, True, timed=False)
    line = Line(client, 0.2)
    try:
        with pytest.raises(TimeoutError):
            await line.round_trip([("BLPOP", f"line-test-{id(line)}", "1")])  # answers after 1 s
        assert await line.round_trip([("ECHO", "mine")]) == ["mine"]
    finally:
        await line.close()
        await client.aclose()
