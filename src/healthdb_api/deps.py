"""Request dependencies: the caller's identity and role checks.

Routes enter the clinic scope explicitly with ``async with scope(db, principal)`` so the
tenant of every database call is visible at the call site.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import ClinicScope, DatabaseService, QueryOptions, Role, keys
from healthdb.contrib.fastapi import get_db
from healthdb.models import User
from healthdb_api.access import clinic_of
from healthdb_api.auth.tokens import InvalidToken, TokenConfig, VerifiedTokens
from healthdb_api.errors import ApiError

Db = Annotated[DatabaseService, Depends(get_db)]

#: How long a user's standing (active flag and role) may be served from the cache. A write
#: to ``users`` evicts it at once, in every process while Redis carries invalidations; this
#: bounds how stale it can be when Redis is down.
STANDING_TTL = 30.0


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    user_id: uuid.UUID
    clinic_id: uuid.UUID
    role: Role
    request_id: str
    client_addr: str | None


# Dependencies are ``async def`` even when they do no I/O: FastAPI runs a plain ``def``
# dependency in a worker thread, which costs more than the rest of the dependency.
async def token_config(request: Request) -> TokenConfig:
    config: TokenConfig = request.app.state.token_config
    return config


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


class BearerPrincipal(HTTPBearer):
    """The caller of a request bearing a valid access token (401 otherwise).

    One dependency that is both the OpenAPI ``bearer`` security scheme and the resolution of
    the caller (two dependencies cost twice FastAPI's per-dependency work on every request).

    The token proves identity; privileges come from the user's *current* standing, so a
    deactivated user is refused and a changed role applies from the next request, not when
    the token expires (see :data:`STANDING_TTL`).

    Every authenticated request is charged one unit of its clinic's rate budget here (429
    when over it); FastAPI resolves this dependency once per request, however many
    dependencies use it.
    """

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("missing bearer token")
        return await _principal(request, token.strip())


current_principal = BearerPrincipal(auto_error=False, scheme_name="HTTPBearer")


async def _principal(request: Request, token: str) -> Principal:
    # Read from the app, not through more dependencies: each one costs per request.
    tokens: VerifiedTokens = request.app.state.verified_tokens
    db: DatabaseService = request.app.state.db
    try:
        claims = tokens.decode(token)
    except InvalidToken:
        raise _unauthorized("invalid or expired token") from None
    clinic_of(request.scope, claims.clinic_id)
    await db.check_rate_limit(claims.clinic_id)
    request_id: str = request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex
    role = await _current_role(db, claims.clinic_id, claims.user_id, request_id)
    if role is None:
        raise _unauthorized("invalid or expired token")
    return Principal(
        user_id=claims.user_id,
        clinic_id=claims.clinic_id,
        role=role,
        request_id=request_id,
        client_addr=request.client.host if request.client else None,
    )


async def _current_role(
    db: DatabaseService, clinic_id: uuid.UUID, user_id: uuid.UUID, request_id: str
) -> Role | None:
    """The user's role now, or None if the user is gone or deactivated."""

    async def standing(session: AsyncSession) -> tuple[bool, str] | None:
        statement = select(User.active, User.role).where(User.id == user_id)
        row = (await session.execute(statement)).one_or_none()
        return None if row is None else (row.active, row.role)

    options = QueryOptions.for_read("users.standing").cached(
        keys.for_user(clinic_id, user_id), ttl=STANDING_TTL
    )
    async with db.clinic(clinic_id, actor=user_id, purpose="authentication", request_id=request_id):
        found = await db.execute_read(standing, options)
    if found is None or not found[0]:
        return None
    return Role.parse(found[1])


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_roles(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """Dependency factory: 403 unless the caller has one of ``roles``."""
    allowed = frozenset(roles)

    async def check(principal: CurrentPrincipal) -> Principal:
        if principal.role not in allowed:
            raise ApiError(403, "forbidden", "your role may not perform this action")
        return principal

    return check


def scope(
    db: DatabaseService, principal: Principal, *, purpose: str = "operations"
) -> AbstractAsyncContextManager[ClinicScope]:
    """Enter the caller's clinic scope for the enclosed database calls."""
    return db.clinic(
        principal.clinic_id,
        actor=principal.user_id,
        role=principal.role,
        purpose=purpose,
        request_id=principal.request_id,
        client_addr=principal.client_addr,
    )
