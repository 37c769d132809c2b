"""JWT access tokens: HS256 only, every registered claim checked, token type enforced."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
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
    return _decode(config, token)[0]


class VerifiedTokens:
    """:func:`decode_access` with a memory of tokens already verified.

    A verified token's claims cannot change, only its time window can run out: a token seen
    before is answered from memory while ``nbf <= now < exp``, without repeating the
    signature and claim checks (which cost a tenth of an audited read). At most ``size``
    tokens are kept, least recently used first out.
    """

    def __init__(
        self, config: TokenConfig, *, size: int = 10_000, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self._size = size
        self._clock = clock
        self._seen: OrderedDict[str, tuple[Claims, float, float]] = OrderedDict()

    def decode(self, token: str) -> Claims:
        known = self._seen.get(token)
        now = self._clock()
        if known is not None:
            claims, not_before, expires = known
            if not_before <= now < expires:
                self._seen.move_to_end(token)
                return claims
            del self._seen[token]
        claims, not_before, expires = _decode(self.config, token)
        self._seen[token] = (claims, not_before, expires)
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return claims


def _decode(config: TokenConfig, token: str) -> tuple[Claims, float, float]:
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
        claims = Claims(
            user_id=uuid.UUID(payload["sub"]),
            clinic_id=uuid.UUID(payload["cid"]),
            role=Role.parse(payload.get("role")),
        )
        return claims, float(payload["nbf"]), float(payload["exp"])
    except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
        raise InvalidToken("invalid token") from exc
