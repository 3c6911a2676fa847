"""Settings: environment variables prefixed ``RELAY_`` (and a ``.env`` file), one class.

Every field is documented in README.md's settings table; keep the two in step.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _instance_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


Seconds = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RELAY_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,  # RELAY_REDIS_URL= counts as unset
        extra="ignore",
        populate_by_name=True,
    )

    redis_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("RELAY_REDIS_URL", "REDIS_URL"),
        description="Redis to use; unset: an embedded in-process Redis (one instance, nothing kept).",
    )
    redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Sentinels as host:port,host:port,...: Redis is the master they name (with RELAY_REDIS_SENTINEL_MASTER).",
    )
    redis_sentinel_master: str | None = Field(
        default=None, description="The master's name the sentinels monitor (with RELAY_REDIS_SENTINELS)."
    )
    redis_cluster: bool = Field(
        default=False, description="RELAY_REDIS_URL names a node of a Redis Cluster (Redis 7 or newer)."
    )
    ack_replicas: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Replicas that must have a batch (WAIT) before it is acknowledged.",
    )
    key_prefix: str = Field(default="relay", description="Prefix of every Redis key the relay writes.")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_message_bytes: int = Field(default=65536, ge=16, le=16 * 1024 * 1024)
    stream_maxlen: int = Field(default=10_000, ge=0, description="Entries kept per channel; 0: no limit.")
    stream_max_age: Seconds | None = Field(
        default=None, description="Seconds an entry is kept; unset: forever."
    )
    consumer_buffer: int = Field(default=1000, ge=1, description="Live messages held per consumer.")
    producer_window: int = Field(default=256, ge=1, description="Unanswered frames per producer.")
    idempotency_ttl: int = Field(default=86_400, ge=1, description="Seconds an Idempotency-Key is kept.")
    drain_grace: float = Field(
        default=3.0,
        ge=0,
        description="Seconds /readyz says 503 before consumers go: longer than the balancer takes to notice.",
    )
    drain_timeout: Seconds = Field(default=2.0, description="Seconds connections get to close after that.")
    redis_timeout: Seconds = Field(default=2.0, description="Connect and command timeout towards Redis.")
    group_claim_idle_ms: int = Field(default=30_000, ge=100, description="Idle time before redelivery.")
    group_max_deliveries: int = Field(default=5, ge=1, description="Deliveries before the dead letters.")
    group_prefetch: int = Field(default=10, ge=1, le=1000, description="Default unacked messages per member.")
    janitor_interval: Seconds = Field(default=10.0, description="Seconds between two janitor rounds.")
    janitor_reap_idle_ms: int = Field(
        default=60_000, ge=0, description="Idle time before a group consumer with no heartbeat is removed."
    )
    instance_name: str = Field(default_factory=_instance_name)
    log_level: str = "info"
    ws_per_message_deflate: bool = False
    ws: Literal["wire", "websockets-sansio", "websockets", "wsproto"] = Field(
        default="wire",
        description="WebSocket implementation: wire (frames written straight to sockets) or uvicorn's own.",
    )
    ws_ping_interval: Seconds = Field(
        default=20.0, description="Seconds between the relay's WebSocket pings to each client."
    )
    ws_ping_timeout: Seconds = Field(
        default=20.0,
        description="Seconds a client has to answer a ping, or to answer the relay's close: else it is reset.",
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=4096,
        le=1024 * 1024,
        description="Request header fields per request or handshake; over it: 431.",
    )
    handshake_timeout: Seconds = Field(
        default=5.0, description="Seconds a client has to send a whole request head; else 408 and closed."
    )
    send_buffer_bytes: int = Field(
        default=128 * 1024,
        ge=0,
        description="Kernel send buffer per connection (SO_SNDBUF; Linux doubles it); 0: the kernel's own.",
    )
    loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto", description="Event loop (auto: uvloop)."
    )
    jwt_secret: SecretStr | None = Field(default=None, description="HS256 key: tokens required when set.")
    jwt_public_key: SecretStr | None = Field(default=None, description="PEM public key (RS256/ES256).")
    jwt_public_key_file: str | None = Field(default=None, description="Path of that PEM file.")
    jwt_algorithm: Literal["RS256", "ES256"] = Field(default="RS256", description="With a public key.")
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = Field(default=0.0, ge=0, description="Seconds of clock skew allowed on exp/nbf.")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed to open WebSockets (comma-separated); empty: any."
    )
    publish_rate: float = Field(
        default=0.0, ge=0, description="Messages per second per producer; 0: no limit."
    )
    publish_burst: int = Field(default=100, ge=1, description="Messages a producer may send at once.")
    max_connections: int = Field(
        default=10_000, ge=1, description="Connections per instance (WebSockets and event streams)."
    )
    sse_ping_interval: float = Field(
        default=15.0, gt=0, le=15, description="Seconds between the comments that keep an event stream busy."
    )
    max_subscriptions: int = Field(
        default=256, ge=1, le=100_000, description="Channels one /ws connection may follow at once."
    )
    presence_ttl: Seconds = Field(
        default=30.0,
        description="Seconds after which the presence of a silent instance's connections is gone.",
    )
    producer_idle_timeout: float = Field(
        default=300.0, ge=0, description="Seconds a producer may send nothing before it is closed; 0: never."
    )
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="after")
    def _no_empty_key(self) -> Settings:
        """``RELAY_JWT_SECRET=`` must not quietly mean "no authentication"."""
        for name in ("RELAY_JWT_SECRET", "RELAY_JWT_PUBLIC_KEY", "RELAY_JWT_PUBLIC_KEY_FILE"):
            if name in os.environ and not os.environ[name].strip():
                raise ValueError(f"{name} is set but empty: set a key, or unset it to run without tokens")
        return self

    @model_validator(mode="after")
    def _one_key(self) -> Settings:
        if self.jwt_secret is not None and (
            self.jwt_public_key is not None or self.jwt_public_key_file is not None
        ):
            raise ValueError("set RELAY_JWT_SECRET or RELAY_JWT_PUBLIC_KEY(_FILE), not both")
        if self.jwt_public_key is not None and self.jwt_public_key_file is not None:
            raise ValueError("set RELAY_JWT_PUBLIC_KEY or RELAY_JWT_PUBLIC_KEY_FILE, not both")
        return self

    @model_validator(mode="after")
    def _one_topology(self) -> Settings:
        if bool(self.redis_sentinels) != (self.redis_sentinel_master is not None):
            raise ValueError("set RELAY_REDIS_SENTINELS and RELAY_REDIS_SENTINEL_MASTER together, or neither")
        if self.redis_sentinels and self.redis_cluster:
            raise ValueError("set RELAY_REDIS_SENTINELS or RELAY_REDIS_CLUSTER, not both")
        if self.redis_cluster and self.redis_url is None:
            raise ValueError("RELAY_REDIS_CLUSTER needs RELAY_REDIS_URL naming a node of the cluster")
        if self.ack_replicas and self.redis_url is None and not self.redis_sentinels:
            raise ValueError("RELAY_ACK_REPLICAS needs a Redis with replicas; the embedded one has none")
        return self

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _sentinel_addresses(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        addresses = [part.strip() for part in value.split(",") if part.strip()]
        for address in addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port, got {address!r}")
        return addresses

    @field_validator("ws")
    @classmethod
    def _ws_installed(cls, value: str) -> str:
        if value == "wsproto" and importlib.util.find_spec("wsproto") is None:
            raise ValueError(
                "wsproto is not installed: pip install 'relay[wsproto]' (or the checkout's '.[wsproto]')"
            )
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("expected at least 32 bytes (RFC 7518 section 3.2); use a random secret")
        return value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip().rstrip("/").lower() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if _PREFIX.fullmatch(value) is None:
            raise ValueError(f"expected 1-64 characters of [A-Za-z0-9_.:-], got {value!r}")
        return value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        levels = ("critical", "error", "warning", "info", "debug", "trace")
        if value.lower() not in levels:
            raise ValueError(f"expected one of {', '.join(levels)}, got {value!r}")
        return value.lower()

    @property
    def tokens_required(self) -> bool:
        return any(k is not None for k in (self.jwt_secret, self.jwt_public_key, self.jwt_public_key_file))

    @property
    def embedded(self) -> bool:
        return self.redis_url is None and not self.redis_sentinels

    @property
    def topology(self) -> Literal["embedded", "standalone", "sentinel", "cluster"]:
        if self.redis_sentinels:
            return "sentinel"
        if self.redis_cluster:
            return "cluster"
        return "embedded" if self.redis_url is None else "standalone"

    def redis_url_for_display(self) -> str:
        """Where Redis is, any password masked, for logs."""
        if self.redis_sentinels:
            return f"master {self.redis_sentinel_master!r} of sentinels {','.join(self.redis_sentinels)}"
        if self.redis_url is None:
            return "embedded (fakeredis)"
        parts = urlsplit(self.redis_url.get_secret_value())
        if parts.password is not None:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
            parts = parts._replace(netloc=netloc)
        return f"cluster at {urlunsplit(parts)}" if self.redis_cluster else urlunsplit(parts)
