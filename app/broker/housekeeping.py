"""The janitor's part of the broker (:class:`app.broker.interface.Housekeeping`) on Redis.

One client (``relay:<instance>:janitor``, up to two connections): listing channels, applying
retention with the publish script and no messages, the lease, and removing consumers of dead
processes with ``reap.lua`` (their heartbeats are the groups' ``relay:alive:<name>`` keys).
"""

from __future__ import annotations

from typing import Final

from app.broker import clients, scripts
from app.broker.calls import checked, group_call
from app.broker.interface import ChannelInfo, ConsumerInfo
from app.broker.keys import Keys
from app.broker.streams import close_client, list_channels, retention_args
from app.settings import Settings

_CONNECTIONS: Final = 2


class RedisHousekeeping:
    def __init__(self, settings: Settings, made: clients.Clients | None = None) -> None:
        made = made or clients.for_settings(settings)
        self._made = made
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        self._client = made.make("janitor", _CONNECTIONS, 1, True)
        self._lease = self._client.register_script(scripts.LEASE)
        self._reap = self._client.register_script(scripts.REAP)
        self._trim = self._client.register_script(scripts.PUBLISH)
        self._retention = list(retention_args(settings, made.sharded))

    async def channels(self, limit: int) -> list[ChannelInfo]:
        return await list_channels(self._client, self._keys, limit)

    async def trim(self, channel: str) -> int:
        keys = self._keys
        names = [keys.stream(channel), keys.trimmed(channel), keys.live(channel)]
        reply = await checked(self._trim(keys=names, args=self._retention), "trim")
        return int(reply[1])

    async def lease(self, holder: str, ttl_ms: int) -> bool:
        return bool(
            await checked(self._lease(keys=[self._keys.janitor_lease()], args=[holder, ttl_ms]), "janitor")
        )

    async def group_consumers(self, channel: str) -> list[ConsumerInfo]:
        key = self._keys.stream(channel)
        out: list[ConsumerInfo] = []
        for group in await checked(self._client.xinfo_groups(key), "janitor"):
            name = str(group["name"])
            for consumer in await checked(self._client.xinfo_consumers(key, name), "janitor"):
                out.append(
                    ConsumerInfo(name, str(consumer["name"]), int(consumer["pending"]), int(consumer["idle"]))
                )
        return out

    async def reap_consumer(self, channel: str, group: str, consumer: str, min_idle_ms: int) -> bool:
        # the heartbeat first, apart: on a cluster it lives in another slot than the stream
        if await checked(self._client.exists(self._keys.alive(consumer)), "janitor"):
            return False
        keys = [self._keys.stream(channel)]
        return bool(await group_call(self._reap(keys=keys, args=[group, consumer, min_idle_ms]), "janitor"))

    async def close(self) -> None:
        await close_client(self._client, self._settings.redis_timeout)
        await self._made.close()
