"""Users routes (``/api/v1/users``): a clinic admin manages the staff of their own clinic.

Every handler runs inside the caller's clinic scope, so a user id of another clinic is
simply not found (404), exactly like a missing one.

Audit: creating a user records ``user.create`` and changing a role ``user.role_change``
(``reason``: ``"<old> -> <new>"``), each in the transaction that makes the change, with the
admin as actor (see :mod:`healthdb_api.auth.audit`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, NoReturn

import structlog
from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import ConflictError, NotFound, QueryOptions, Role, audit_log
from healthdb.models import User
from healthdb.repositories import DEFAULT_LIMIT, MAX_LIMIT, UserRepository
from healthdb_api.auth import registration
from healthdb_api.auth.registration import RegistrationThrottle
from healthdb_api.auth.routes import (
    add_user,
    check_new_password,
    duplicate_account,
    email_taken,
    hash_new_password,
)
from healthdb_api.auth.schemas import UserCreateIn, UserOut, UserPage, UserPatchIn
from healthdb_api.auth.sessions import revoke_user_tokens
from healthdb_api.auth.throttle import LoginThrottle
from healthdb_api.deps import Db, Principal, require_roles, scope
from healthdb_api.errors import ApiError

log = structlog.get_logger("healthdb_api.users")

router = APIRouter(prefix="/api/v1/users", tags=["users"])

Admin = Annotated[Principal, Depends(require_roles(Role.CLINIC_ADMIN))]
MAX_CURSOR = 4096


@router.post("", status_code=201, response_model=UserOut)
async def create_user(
    body: UserCreateIn, admin: Admin, db: Db, throttle: RegistrationThrottle
) -> UserOut:
    """Create a staff account in the admin's clinic.

    An address already used by any account, in this clinic or another, is a 409 with one
    generic message. Since anyone can register a clinic, that answer could enumerate
    accounts; so each such conflict is audited in the admin's clinic and counted in the
    registration windows of the admin's address, and past that budget this route answers
    429 for every address, taken or free (see :mod:`healthdb_api.auth.registration`).
    """
    await check_new_password(body.password, email=body.email, user_inputs=(body.full_name,))
    await registration.refuse_when_over_budget(throttle, admin.client_addr)
    if await email_taken(db, body.email):
        await _conflict(db, admin, throttle, body.email)
    password_hash = await hash_new_password(body.password)

    async def op(session: AsyncSession) -> User:
        return await add_user(
            session,
            clinic_id=admin.clinic_id,
            email=body.email,
            password_hash=password_hash,
            full_name=body.full_name,
            role=body.role,
        )

    try:
        async with scope(db, admin):
            user = await db.execute_write(op, QueryOptions.for_write("users.create"))
    except ConflictError:
        await _conflict(db, admin, throttle, body.email)
    log.info("user_created", user_id=str(user.id), by=str(admin.user_id), role=user.role)
    return UserOut.of(user)


async def _conflict(db: Db, admin: Principal, throttle: LoginThrottle, email: str) -> NoReturn:
    """Audit and count a creation refused for a taken address, then answer 409."""

    async def op(session: AsyncSession) -> None:
        await audit_log.record(
            session,
            "user.create",
            "users",
            outcome=audit_log.Outcome.DENIED,
            reason="e-mail address unavailable",
        )

    async with scope(db, admin):
        await db.execute_write(op, QueryOptions.for_write("users.create_denied"))
    await registration.count_probe(throttle, email, admin.client_addr)
    raise duplicate_account()


@router.get("", response_model=UserPage)
async def list_users(
    admin: Admin,
    db: Db,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> UserPage:
    """The clinic's users, oldest first; pass ``next_cursor`` back for the next page."""

    async def op(session: AsyncSession) -> UserPage:
        page = await UserRepository(session).list(cursor=cursor, limit=limit)
        return UserPage(items=[UserOut.of(u) for u in page.items], next_cursor=page.next_cursor)

    async with scope(db, admin):
        return await db.execute_read(op, QueryOptions.for_read("users.list"))


@router.get("/{user_id}", response_model=UserOut)
async def get_user(user_id: uuid.UUID, admin: Admin, db: Db) -> UserOut:
    """One user of the clinic (404 for a missing id or another clinic's)."""

    async def op(session: AsyncSession) -> User | None:
        return await UserRepository(session).get(user_id)

    async with scope(db, admin):
        user = await db.execute_read(op, QueryOptions.for_read("users.get"))
    if user is None:
        raise NotFound("user not found")
    return UserOut.of(user)


@router.patch("/{user_id}", response_model=UserOut)
async def update_user(user_id: uuid.UUID, body: UserPatchIn, admin: Admin, db: Db) -> UserOut:
    """Change a user's role, name or active flag.

    Deactivation revokes the user's refresh tokens in the same transaction; access tokens
    already issued are refused from the next request, and a new role applies to them at
    once (:func:`healthdb_api.deps.current_principal` reads the user's current standing).
    A clinic always keeps one active ``clinic_admin``.
    """
    changes: dict[str, Any] = {}
    if body.role is not None:
        changes["role"] = body.role.value
    if body.active is not None:
        changes["active"] = body.active
    if body.full_name is not None:
        changes["full_name"] = body.full_name

    async def op(session: AsyncSession) -> User:
        users = UserRepository(session)
        user = await users.get(user_id)
        if user is None:
            raise NotFound("user not found")
        if not changes:
            return user
        was_admin = user.active and user.role == Role.CLINIC_ADMIN.value
        stays_admin = changes.get("active", user.active) and (
            changes.get("role", user.role) == Role.CLINIC_ADMIN.value
        )
        if was_admin and not stays_admin:
            others = await users.count(
                where=[
                    User.role == Role.CLINIC_ADMIN.value,
                    User.active.is_(True),
                    User.id != user.id,
                ]
            )
            if others == 0:
                raise ApiError(
                    409, "last_admin", "a clinic must keep at least one active clinic_admin"
                )
        old_role = user.role
        updated = await users.update(user.id, expected_version=None, **changes)
        if changes.get("role", old_role) != old_role:
            await audit_log.record(
                session,
                "user.role_change",
                "users",
                user.id,
                reason=f"{old_role} -> {updated.role}",
            )
        if changes.get("active") is False:
            await revoke_user_tokens(session, user.id, dt.datetime.now(dt.UTC))
        return updated

    async with scope(db, admin):
        user = await db.execute_write(op, QueryOptions.for_write("users.update"))
    log.info("user_updated", user_id=str(user.id), by=str(admin.user_id), fields=sorted(changes))
    return UserOut.of(user)
