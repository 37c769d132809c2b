"""Refresh tokens: opaque, stored hashed, rotated on every use, reuse revokes the family.

A refresh token reads ``<clinic_id>.<43 urlsafe characters>`` (32 random bytes). The clinic
prefix lets the service enter the right clinic scope before any lookup; the random part is
the secret. Only ``sha256(token)`` is stored, so a copy of the table cannot be replayed.

Rotation spends the presented token with a conditional ``UPDATE ... WHERE used_at IS NULL``
and checks the row count, so of two concurrent refreshes of one token at most one wins. A
token presented after it was spent (including the loser of such a race) is treated as
stolen: every token of its family is revoked and a ``refresh_token_reuse`` warning logged.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import CursorResult, Update, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import DatabaseService, QueryOptions, audit_log
from healthdb.models import Clinic, RefreshToken, User
from healthdb.repositories import UserRepository

log = structlog.get_logger("healthdb_api.auth")

SECRET_BYTES = 32
_SECRET = re.compile(r"[A-Za-z0-9_-]{43,128}")
MAX_TOKEN_LENGTH = 256
PURPOSE = "authentication"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _rowcount(session: AsyncSession, statement: Update) -> int:
    """Run an ORM UPDATE (the isolation walls scope it) and return the matched row count."""
    result: CursorResult[Any] = await session.execute(  # type: ignore[assignment]
        statement.execution_options(synchronize_session=False)
    )
    return int(result.rowcount)


def hash_token(token: str) -> str:
    """The stored form of a refresh token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_refresh_token(clinic_id: uuid.UUID) -> str:
    return f"{clinic_id}.{secrets.token_urlsafe(SECRET_BYTES)}"


@dataclass(frozen=True, slots=True)
class ParsedToken:
    clinic_id: uuid.UUID
    token_hash: str


def parse_refresh_token(token: object) -> ParsedToken | None:
    """The clinic and hash of a well-formed token; ``None`` for anything else."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        return None
    prefix, secret = token.split(".")
    if _SECRET.fullmatch(secret) is None:
        return None
    try:
        clinic_id = uuid.UUID(prefix)
    except ValueError:
        return None
    if str(clinic_id) != prefix:  # one spelling per token: no aliases of the same clinic
        return None
    return ParsedToken(clinic_id, hash_token(token))


async def add_refresh_token(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    clinic_id: uuid.UUID,
    ttl_seconds: int,
    family_id: uuid.UUID | None = None,
    now: dt.datetime | None = None,
) -> str:
    """Insert a new token (a new family unless ``family_id``) inside the clinic's scope."""
    now = now or _now()
    token = new_refresh_token(clinic_id)
    session.add(
        RefreshToken(
            user_id=user_id,
            clinic_id=clinic_id,
            token_hash=hash_token(token),
            family_id=family_id or uuid.uuid4(),
            expires_at=now + dt.timedelta(seconds=ttl_seconds),
        )
    )
    await session.flush()
    return token


async def revoke_family(session: AsyncSession, family_id: uuid.UUID, now: dt.datetime) -> int:
    """Revoke every live token of a family; returns how many were revoked."""
    return await _rowcount(
        session,
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now),
    )


async def revoke_user_tokens(session: AsyncSession, user_id: uuid.UUID, now: dt.datetime) -> int:
    """Revoke every live token of a user (deactivation)."""
    return await _rowcount(
        session,
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now),
    )


class Outcome(enum.Enum):
    OK = "ok"
    INVALID = "invalid"
    REUSED = "reused"


@dataclass(frozen=True, slots=True)
class Rotation:
    outcome: Outcome
    user: User | None = None
    refresh_token: str | None = None
    family_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None


async def _reused(session: AsyncSession, row: RefreshToken, now: dt.datetime) -> Rotation:
    """Revoke the family of a token presented again, and audit it in the same transaction."""
    await revoke_family(session, row.family_id, now)
    user = await UserRepository(session).get(row.user_id)
    await audit_log.record(
        session,
        "auth.refresh_reuse",
        "refresh_tokens",
        row.family_id,
        outcome=audit_log.Outcome.DENIED,
        reason="a spent refresh token was presented again; its family was revoked",
        actor_id=row.user_id,
        actor_role=None if user is None else user.role,
    )
    return Rotation(Outcome.REUSED, family_id=row.family_id, user_id=row.user_id)


async def rotate(
    db: DatabaseService,
    token: str,
    *,
    ttl_seconds: int,
    request_id: str | None = None,
    client_addr: str | None = None,
) -> Rotation:
    """Spend ``token`` and issue its successor in the same family (one transaction).

    Returns the outcome instead of raising so that a reuse's revocation (and its audit row)
    is committed.
    """
    parsed = parse_refresh_token(token)
    if parsed is None:
        return Rotation(Outcome.INVALID)

    async def op(session: AsyncSession) -> Rotation:
        now = _now()
        row = (
            await session.scalars(
                select(RefreshToken).where(RefreshToken.token_hash == parsed.token_hash)
            )
        ).one_or_none()
        if row is None or row.revoked_at is not None:
            return Rotation(Outcome.INVALID)
        if row.used_at is not None:
            return await _reused(session, row, now)
        if row.expires_at <= now:
            return Rotation(Outcome.INVALID)
        spent = await _rowcount(
            session,
            update(RefreshToken)
            .where(
                RefreshToken.id == row.id,
                RefreshToken.used_at.is_(None),
                RefreshToken.revoked_at.is_(None),
            )
            .values(used_at=now),
        )
        if spent != 1:
            # Spent (or revoked) by a concurrent request since we read it: a second use.
            return await _reused(session, row, now)
        user = await UserRepository(session).get(row.user_id)
        clinic = await session.get(Clinic, parsed.clinic_id)
        if user is None or not user.active or clinic is None or not clinic.active:
            await revoke_family(session, row.family_id, now)
            return Rotation(Outcome.INVALID)
        successor = await add_refresh_token(
            session,
            user_id=user.id,
            clinic_id=parsed.clinic_id,
            ttl_seconds=ttl_seconds,
            family_id=row.family_id,
            now=now,
        )
        return Rotation(Outcome.OK, user=user, refresh_token=successor, family_id=row.family_id)

    async with db.clinic(
        parsed.clinic_id, purpose=PURPOSE, request_id=request_id, client_addr=client_addr
    ):
        rotation = await db.execute_write(op, QueryOptions.for_write("auth.refresh"))
    if rotation.outcome is Outcome.REUSED:
        log.warning(
            "refresh_token_reuse",
            clinic_id=str(parsed.clinic_id),
            user_id=str(rotation.user_id),
            family_id=str(rotation.family_id),
        )
    return rotation


async def revoke(db: DatabaseService, token: str, *, request_id: str | None = None) -> bool:
    """Revoke the family of ``token`` (logout); ``False`` when the token is unknown."""
    parsed = parse_refresh_token(token)
    if parsed is None:
        return False

    async def op(session: AsyncSession) -> uuid.UUID | None:
        row = (
            await session.scalars(
                select(RefreshToken).where(RefreshToken.token_hash == parsed.token_hash)
            )
        ).one_or_none()
        if row is None:
            return None
        await revoke_family(session, row.family_id, _now())
        return row.user_id

    async with db.clinic(parsed.clinic_id, purpose=PURPOSE, request_id=request_id):
        user_id = await db.execute_write(op, QueryOptions.for_write("auth.logout"))
    if user_id is not None:
        log.info("logout", clinic_id=str(parsed.clinic_id), user_id=str(user_id))
    return user_id is not None
