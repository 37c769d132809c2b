"""Platform operators: whoever runs the service, reading operational figures across clinics.

Pool occupancy, latencies per operation, cache ratios, slow statements and the Prometheus
metrics describe every clinic at once, so a clinic's admin must not see them (they would
show other clinics' activity). They belong to a *platform operator*: an account that
belongs to no clinic, is created only from the command line by whoever runs the service
(``healthdb operator create``, through the database owner), and can read these figures and
no clinic's rows: an operator request never enters a clinic scope, so both isolation walls
show it nothing.

An operator authenticates with ``Authorization: Bearer hdbop_<key>`` (also what a
Prometheus scrape sends). The key is 256 random bits shown once at creation; only its
SHA-256 is stored, and ``healthdb operator revoke`` deactivates it at once. A clinic
user's access token on these routes is 403; anything else is 401.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from fastapi import Request
from fastapi.security import HTTPBearer
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import DatabaseService, QueryOptions, Settings
from healthdb.engine import create_engine
from healthdb.migrate import upgrade
from healthdb.models import PlatformOperator
from healthdb_api.auth.tokens import InvalidToken, VerifiedTokens
from healthdb_api.errors import ApiError
from healthdb_api.settings import ApiSettings

__all__ = [
    "KEY_PREFIX",
    "Operator",
    "OperatorKey",
    "create_operator",
    "key_hash",
    "list_operators",
    "require_operator",
    "revoke_operator",
]

log = structlog.get_logger("healthdb_api.security")
T = TypeVar("T")

KEY_PREFIX = "hdbop_"
#: ``hdbop_`` and 43 urlsafe characters; anything much longer is not a key.
MAX_KEY = 128


@dataclass(frozen=True, slots=True)
class Operator:
    """An authenticated platform operator."""

    id: uuid.UUID
    name: str


def key_hash(key: str) -> str:
    """What is stored of a key: its SHA-256 (a 256-bit random key needs no slow hash)."""
    return hashlib.sha256(key.encode()).hexdigest()


class OperatorKey(HTTPBearer):
    """The platform operator calling (401 without a valid key, 403 for a clinic user's
    token); also the OpenAPI ``OperatorKey`` bearer scheme of the routes it guards."""

    async def __call__(self, request: Request) -> Operator:  # type: ignore[override]
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        token = token.strip()
        bearer = scheme.lower() == "bearer"
        if bearer and token.startswith(KEY_PREFIX) and len(token) <= MAX_KEY:
            operator = await _operator(request.app.state.db, key_hash(token))
            if operator is not None:
                log.info("operator_access", operator_id=str(operator.id), method=request.method)
                return operator
        elif bearer and _is_clinic_token(request, token):
            raise ApiError(403, "forbidden", "platform operators only")
        raise ApiError(
            401,
            "unauthorized",
            "a platform operator key is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


#: Dependency: the platform operator calling (see :class:`OperatorKey`).
require_operator = OperatorKey(auto_error=False, scheme_name="OperatorKey")


def _is_clinic_token(request: Request, token: str) -> bool:
    tokens: VerifiedTokens = request.app.state.verified_tokens
    try:
        tokens.decode(token)
    except InvalidToken:
        return False
    return True


async def _operator(db: DatabaseService, digest: str) -> Operator | None:
    async def op(session: AsyncSession) -> Operator | None:
        stmt = select(PlatformOperator.id, PlatformOperator.name).where(
            PlatformOperator.key_hash == digest, PlatformOperator.active.is_(True)
        )
        row = (await session.execute(stmt)).first()
        return None if row is None else Operator(id=row.id, name=row.name)

    return await db.execute_read(op, QueryOptions.for_read("operators.authenticate"))


# -- the command line, through the database owner -----------------------------------------------


async def _as_owner(settings: ApiSettings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction as the database owner (``HEALTHDB_ADMIN_DATABASE_URL``):
    the runtime role may only read operators."""
    admin = Settings(database_url=settings.admin_url)
    if settings.auto_migrate and not admin.is_postgres:
        await upgrade(settings.admin_url)
    engine = create_engine(admin.url, admin, pool_size=1, max_overflow=0)
    try:
        async with AsyncSession(bind=engine) as session, session.begin():
            return await work(session)
    finally:
        await engine.dispose()


async def create_operator(settings: ApiSettings, name: str) -> str:
    """Create operator ``name``; return its key (shown once, never stored)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)

    async def work(session: AsyncSession) -> None:
        session.add(PlatformOperator(name=name, key_hash=key_hash(key), active=True))

    await _as_owner(settings, work)
    return key


async def revoke_operator(settings: ApiSettings, name: str) -> bool:
    """Deactivate operator ``name``; False if there is no such active operator."""

    async def work(session: AsyncSession) -> bool:
        stmt = (
            update(PlatformOperator)
            .where(PlatformOperator.name == name, PlatformOperator.active.is_(True))
            .values(active=False)
        )
        return bool((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]

    return await _as_owner(settings, work)


async def list_operators(settings: ApiSettings) -> list[tuple[str, bool]]:
    """Every operator's name and whether it is active."""

    async def work(session: AsyncSession) -> list[tuple[str, bool]]:
        stmt = select(PlatformOperator.name, PlatformOperator.active).order_by(
            PlatformOperator.name
        )
        return [(row.name, row.active) for row in (await session.execute(stmt)).all()]

    return await _as_owner(settings, work)
