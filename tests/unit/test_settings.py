from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RELAY_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_run_embedded() -> None:
    settings = Settings()
    assert settings.embedded
    assert (settings.key_prefix, settings.stream_maxlen, settings.stream_max_age) == ("relay", 10_000, None)
    assert settings.redis_url_for_display() == "embedded (fakeredis)"


def test_relay_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_STREAM_MAXLEN", "50")
    monkeypatch.setenv("RELAY_STREAM_MAX_AGE", "3600")
    monkeypatch.setenv("RELAY_KEY_PREFIX", "myapp")
    settings = Settings()
    assert (settings.stream_maxlen, settings.stream_max_age, settings.key_prefix) == (50, 3600.0, "myapp")


def test_redis_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://fallback:6379/0")
    assert Settings().redis_url_for_display() == "redis://fallback:6379/0"
    monkeypatch.setenv("RELAY_REDIS_URL", "redis://preferred:6379/0")
    assert Settings().redis_url_for_display() == "redis://preferred:6379/0"
    monkeypatch.setenv("RELAY_REDIS_URL", "")
    assert Settings().redis_url_for_display() == "redis://fallback:6379/0"  # empty counts as unset


def test_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RELAY_CONSUMER_BUFFER=77\nRELAY_REDIS_URL=redis://from-dotenv:1/0\n")
    settings = Settings()
    assert settings.consumer_buffer == 77
    assert settings.redis_url_for_display() == "redis://from-dotenv:1/0"


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_REDIS_URL", "redis://user:s3cret@host:6379/0")
    settings = Settings()
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings)
    assert settings.redis_url_for_display() == "redis://user:***@host:6379/0"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAY_STREAM_MAXLEN", "-1"),
        ("RELAY_MAX_MESSAGE_BYTES", "0"),
        ("RELAY_KEY_PREFIX", "bad prefix"),
        ("RELAY_KEY_PREFIX", "a{b}"),
        ("RELAY_STREAM_MAX_AGE", "0"),
        ("RELAY_CONSUMER_BUFFER", "0"),
        ("RELAY_LOG_LEVEL", "loud"),
        ("RELAY_PORT", "70000"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_one_token_key_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_JWT_SECRET", "s" * 32)
    monkeypatch.setenv("RELAY_JWT_PUBLIC_KEY", "-----BEGIN PUBLIC KEY-----")
    with pytest.raises(ValidationError, match="not both"):
        Settings()


def test_allowed_origins_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_ALLOWED_ORIGINS", "https://app.example, https://admin.example/ ,")
    assert Settings().allowed_origins == ["https://app.example", "https://admin.example"]
    monkeypatch.setenv("RELAY_LOG_FORMAT", "yaml")
    with pytest.raises(ValidationError):
        Settings()


def test_the_token_secret_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_JWT_SECRET", "very-secret-key-" * 3)
    assert "very-secret-key" not in repr(Settings())
    monkeypatch.setenv("RELAY_JWT_SECRET", "short")
    with pytest.raises(ValidationError, match="32 bytes"):
        Settings()


def test_an_empty_token_key_is_an_error_not_an_open_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_JWT_SECRET", "")
    with pytest.raises(ValidationError, match="set but empty"):
        Settings()


def test_sentinels_name_the_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_REDIS_SENTINELS", "s1:26379, s2:26379,[::1]:26380")
    monkeypatch.setenv("RELAY_REDIS_SENTINEL_MASTER", "mymaster")
    monkeypatch.setenv("RELAY_REDIS_URL", "redis://:secret@ignored/2")
    settings = Settings()
    assert settings.topology == "sentinel"
    assert not settings.embedded
    assert settings.redis_sentinels == ["s1:26379", "s2:26379", "[::1]:26380"]
    assert "secret" not in settings.redis_url_for_display()
    assert "s1:26379" in settings.redis_url_for_display()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"RELAY_REDIS_SENTINELS": "s1:26379"}, "together"),
        ({"RELAY_REDIS_SENTINEL_MASTER": "mymaster"}, "together"),
        ({"RELAY_REDIS_SENTINELS": "s1", "RELAY_REDIS_SENTINEL_MASTER": "m"}, "host:port"),
        ({"RELAY_REDIS_SENTINELS": "s1:0", "RELAY_REDIS_SENTINEL_MASTER": "m"}, "host:port"),
        ({"RELAY_REDIS_CLUSTER": "true"}, "RELAY_REDIS_URL"),
        (
            {
                "RELAY_REDIS_CLUSTER": "true",
                "RELAY_REDIS_URL": "redis://a:1",
                "RELAY_REDIS_SENTINELS": "s:1",
                "RELAY_REDIS_SENTINEL_MASTER": "m",
            },
            "not both",
        ),
        ({"RELAY_ACK_REPLICAS": "-1"}, "greater than or equal"),
    ],
)
def test_a_topology_set_halfway_is_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=says):
        Settings()


def test_a_cluster_is_named_by_one_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_REDIS_CLUSTER", "true")
    monkeypatch.setenv("RELAY_REDIS_URL", "redis://node-1:6379/0")
    monkeypatch.setenv("RELAY_ACK_REPLICAS", "1")
    settings = Settings()
    assert (settings.topology, settings.ack_replicas) == ("cluster", 1)
    assert settings.redis_url_for_display() == "cluster at redis://node-1:6379/0"


def test_replica_acks_need_a_redis_with_replicas() -> None:
    with pytest.raises(ValidationError, match="embedded one has none"):
        Settings(ack_replicas=1)
