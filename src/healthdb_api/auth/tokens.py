"""JWT access tokens: HS256 only, every registered claim checked, token type enforced."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import jwt

from healthdb import Role

ALGORITHMS = ["HS256"]  # the allow-list: "none" and asymmetric confusion are impossible
ACCESS = "access"


class InvalidToken(Exception):
    """The token is malformed, expired, of the wrong type or not ours."""


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: uuid.UUID
    clinic_id: uuid.UUID
    role: Role


@dataclass(frozen=True, slots=True)
class TokenConfig:
    secret: str
    issuer: str
    audience: str
    access_ttl: int


def issue_access(config: TokenConfig, claims: Claims, *, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    payload = {
        "sub": str(claims.user_id),
        "cid": str(claims.clinic_id),
        "role": claims.role.value,
        "typ": ACCESS,
        "iss": config.issuer,
        "aud": config.audience,
        "iat": now,
        "nbf": now,
        "exp": now + dt.timedelta(seconds=config.access_ttl),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(payload, config.secret, algorithm=ALGORITHMS[0])


def decode_access(config: TokenConfig, token: str) -> Claims:
    """Verify signature, ``exp``, ``nbf``, ``iss``, ``aud`` and ``typ``; raise InvalidToken."""
    try:
        payload = jwt.decode(
            token,
            config.secret,
            algorithms=ALGORITHMS,
            audience=config.audience,
            issuer=config.issuer,
            options={"require": ["exp", "nbf", "iat", "iss", "aud", "sub", "typ"]},
        )
        if payload.get("typ") != ACCESS:
            raise InvalidToken("not an access token")
        return Claims(
            user_id=uuid.UUID(payload["sub"]),
            clinic_id=uuid.UUID(payload["cid"]),
            role=Role.parse(payload.get("role")),
        )
    except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
        raise InvalidToken("invalid token") from exc
