"""Tokens: who may publish to and subscribe to which channels.

With ``RELAY_JWT_SECRET`` (HS256) or ``RELAY_JWT_PUBLIC_KEY`` / ``RELAY_JWT_PUBLIC_KEY_FILE``
(RS256 or ES256, per ``RELAY_JWT_ALGORITHM``), every channel endpoint needs a JWT, sent as
``Authorization: Bearer <jwt>`` or ``?token=<jwt>``. The algorithm comes from the configuration,
never from the token: ``alg: none`` and HS/RS confusion are refused by PyJWT because only the
configured algorithm is accepted with the configured key.

Claims: ``publish`` and ``subscribe`` are lists of channel patterns: an exact name, ``prefix*``,
or ``*`` for every channel; joining a consumer group also needs ``groups``, a list of group-name
patterns (taking work off a queue is more than watching a channel); ``exp`` is required and enforced (at the handshake, and for a socket
that outlives it, by closing it with 4401); ``nbf`` is honoured; ``aud`` and ``iss`` are checked
when ``RELAY_JWT_AUDIENCE`` / ``RELAY_JWT_ISSUER`` are set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt
from starlette.requests import HTTPConnection

from app.errors import ConfigError, RelayError
from app.settings import Settings


class AuthError(RelayError):
    """Refused. ``status`` 401: no valid token; 403: a valid token that does not cover the request."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token allows; ``expires`` is a Unix time (None: no token was needed). ``user``
    (the ``sub`` claim) and ``info`` (the ``info`` claim, any JSON) are what presence shows."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    expires: float | None = None
    groups: tuple[str, ...] = ("*",)
    user: Any = None
    info: Any = None

    def may_publish(self, channel: str) -> bool:
        return _matches(self.publish, channel)

    def may_subscribe(self, channel: str) -> bool:
        return _matches(self.subscribe, channel)

    def may_join(self, group: str) -> bool:
        return _matches(self.groups, group)


OPEN = Grant(("*",), ("*",))
"""Without a configured key, anyone who reaches the instance may do anything (development)."""


def _matches(patterns: tuple[str, ...], channel: str) -> bool:
    for pattern in patterns:
        if pattern.endswith("*"):
            if channel.startswith(pattern[:-1]):
                return True
        elif pattern == channel:
            return True
    return False


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self._key: str | None = None
        self._algorithm = "HS256"
        if settings.jwt_secret is not None:
            self._key = settings.jwt_secret.get_secret_value()
        elif settings.jwt_public_key is not None or settings.jwt_public_key_file is not None:
            self._key = _public_key(settings)
            self._algorithm = settings.jwt_algorithm
            _check_key(self._key, self._algorithm)
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway

    def grant(self, connection: HTTPConnection) -> Grant:
        """What the request's token allows; raises AuthError (401) when it carries no valid one."""
        if self._key is None:
            return OPEN
        token = token_of(connection)
        if token is None:
            raise AuthError(401, "a token is required: Authorization: Bearer <jwt>, or ?token=<jwt>")
        return self.decode(token)

    @property
    def required(self) -> bool:
        """Whether tokens are checked at all (a key is configured)."""
        return self._key is not None

    def decode(self, token: str) -> Grant:
        """The grant of ``token``; raises AuthError (401) when it does not verify."""
        if self._key is None:
            return OPEN
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp"]},  # a token naming an audience needs RELAY_JWT_AUDIENCE
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError(401, "the token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(401, f"invalid token: {exc}") from exc
        expires = float(claims["exp"]) + self._leeway
        return Grant(
            _patterns(claims, "publish"),
            _patterns(claims, "subscribe"),
            expires,
            _patterns(claims, "groups"),
            user=claims.get("sub"),
            info=claims.get("info"),
        )


def token_of(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return connection.query_params.get("token") or None


def _patterns(claims: dict[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise AuthError(401, f"invalid token: claim {name!r} must be a list of channel patterns")
    return tuple(value)


def _public_key(settings: Settings) -> str:
    if settings.jwt_public_key is not None:
        return settings.jwt_public_key.get_secret_value()
    assert settings.jwt_public_key_file is not None
    try:
        with open(settings.jwt_public_key_file, encoding="utf-8") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(
            f"RELAY_JWT_PUBLIC_KEY_FILE: cannot read {settings.jwt_public_key_file}: {exc}"
        ) from exc


def _check_key(pem: str, algorithm: str) -> None:
    """A key that cannot verify the configured algorithm stops start-up, not every request."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ConfigError(f"RELAY_JWT_PUBLIC_KEY: not a PEM public key: {exc}") from exc
    expected = rsa.RSAPublicKey if algorithm == "RS256" else ec.EllipticCurvePublicKey
    if not isinstance(key, expected):
        raise ConfigError(f"RELAY_JWT_PUBLIC_KEY: expected a key for {algorithm}, got {type(key).__name__}")
