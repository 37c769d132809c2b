"""Migration 0008: the login routes and the clinics behind the walls, the one lookup that
runs before a clinic is known, and writes to clinics and users in the audit trail.

Facade tests run on both backends; the raw attacks run as the runtime role on PostgreSQL
with no clinic set, as an SQL injection in the service would.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import ClinicContextRequired, Settings, audit_log
from healthdb.clinics import create_clinic
from healthdb.internal.rls import walled_tables
from healthdb.models import AuditEvent, Clinic, User, UserLogin
from healthdb.repositories import LoginRoute, find_login
from healthdb.service import DatabaseService
from tests.conftest import _dsn


async def _staff(db: DatabaseService, clinic: uuid.UUID) -> tuple[uuid.UUID, str]:
    """A user of ``clinic`` with its login route; returns (user id, e-mail)."""
    user_id, email = uuid.uuid4(), f"Staff-{uuid.uuid4().hex[:10]}@Clinic.example"

    async def op(session: AsyncSession) -> None:
        session.add(
            User(id=user_id, email=email.lower(), password_hash="!", full_name="S", role="nurse")
        )
        await session.flush()
        session.add(UserLogin(email=email.lower(), user_id=user_id))

    async with db.clinic(clinic, role="clinic_admin"):
        await db.execute_write(op)
    return user_id, email


async def _route(db: DatabaseService, email: str) -> LoginRoute | None:
    return await db.execute_read(lambda s: find_login(s, email))


async def _trail(db: DatabaseService, clinic: uuid.UUID) -> list[AuditEvent]:
    async def op(session: AsyncSession) -> list[AuditEvent]:
        page = await audit_log.AuditQuery(session).page(
            audit_log.AuditFilter(), limit=50, descending=False
        )
        return page.items

    async with db.clinic(clinic, role="clinic_admin"):
        return await db.execute_read(op)


# -- the login lookup -------------------------------------------------------------------------


async def test_the_login_lookup_finds_one_exact_address_and_nothing_else(
    db: DatabaseService,
) -> None:
    clinic = await create_clinic(db, "Login route")
    user_id, email = await _staff(db, clinic)
    assert await _route(db, email) == LoginRoute(user_id=user_id, clinic_id=clinic)
    assert await _route(db, f"  {email.upper()} ") == LoginRoute(user_id, clinic)
    for probe in ("%", "_%", email[:-1], email[:-1] + "_", f"{email}%", "x@y.example"):
        assert await _route(db, probe) is None, probe


async def test_login_routes_are_a_tenant_table_for_every_other_read(db: DatabaseService) -> None:
    clinic = await create_clinic(db, "Login route wall")
    _, email = await _staff(db, clinic)

    async def unscoped(session: AsyncSession) -> list[UserLogin]:
        return list((await session.scalars(select(UserLogin))).all())

    with pytest.raises(ClinicContextRequired):
        await db.execute_read(unscoped)
    other = await create_clinic(db, "Another clinic")
    async with db.clinic(other):
        assert email.lower() not in {login.email for login in await db.execute_read(unscoped)}


# -- clinics: written only in their own scope, and audited -------------------------------------


async def test_a_clinic_row_is_written_only_in_its_own_scope(db: DatabaseService) -> None:
    a, b = await create_clinic(db, "A"), await create_clinic(db, "B")

    async def deactivate_everyone(session: AsyncSession) -> None:
        await session.execute(update(Clinic).values(active=False))

    with pytest.raises(ClinicContextRequired):  # no scope at all
        await db.execute_write(deactivate_everyone)

    async def add(session: AsyncSession) -> None:
        session.add(Clinic(id=uuid.uuid4(), name="stray"))

    with pytest.raises(ClinicContextRequired):
        await db.execute_write(add)
    async with db.clinic(a):
        with pytest.raises(ClinicContextRequired):  # a new clinic, but in A's scope
            await db.execute_write(add)

        async def rename_b(session: AsyncSession) -> None:
            clinic = await session.get(Clinic, b)
            assert clinic is not None
            clinic.name = "taken over"

        with pytest.raises(ClinicContextRequired):
            await db.execute_write(rename_b)
        await db.execute_write(deactivate_everyone)  # narrowed to A's own row

    async def states(session: AsyncSession) -> dict[uuid.UUID, tuple[str, bool]]:
        rows = (await session.execute(select(Clinic.id, Clinic.name, Clinic.active))).all()
        return {row.id: (row.name, row.active) for row in rows if row.id in (a, b)}

    assert await db.execute_read(states) == {a: ("A", False), b: ("B", True)}


async def test_writes_to_clinics_and_users_are_audited_with_field_names_only(
    db: DatabaseService,
) -> None:
    admin = uuid.uuid4()
    clinic = await create_clinic(db, "Audited clinic", actor=admin)
    user_id, _ = await _staff(db, clinic)

    async def set_limit(session: AsyncSession) -> None:
        row = await session.get(Clinic, clinic)
        assert row is not None
        row.rate_limit_per_minute = 1234

    async def deactivate(session: AsyncSession) -> None:
        await session.execute(update(User).where(User.id == user_id).values(active=False))

    async with db.clinic(clinic, actor=admin, role="clinic_admin", request_id="req-1"):
        await db.execute_write(set_limit)
        await db.execute_write(deactivate)
    trail = [
        (e.action, e.resource_type, e.resource_id, e.reason, e.actor_id)
        for e in await _trail(db, clinic)
    ]
    assert trail == [
        ("clinic.create", "clinics", str(clinic), "fields: active, id, name", admin),
        (
            "user.create",
            "users",
            str(user_id),
            "fields: active, clinic_id, email, full_name, id, password_hash, role",
            None,
        ),
        ("clinic.update", "clinics", str(clinic), "fields: rate_limit_per_minute", admin),
        ("user.update", "users", None, "fields: active", admin),  # a bulk update: no row id
    ]
    assert "1234" not in repr(trail)  # names of fields, never values


# -- PostgreSQL: the runtime role with no clinic set (an injection's view) ----------------------


@pytest.fixture
async def runtime(pg_migrated_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(_dsn(pg_migrated_url))
    try:
        yield conn
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_with_no_clinic_set_the_runtime_role_reaches_no_login_and_no_clinic_write(
    pg_migrated_url: str, runtime: asyncpg.Connection
) -> None:
    async with DatabaseService.connect(Settings(database_url=pg_migrated_url)) as db:
        clinic = await create_clinic(db, "Raw attack target")
        user_id, email = await _staff(db, clinic)
    assert await runtime.fetchval("SELECT count(*) FROM user_logins") == 0
    assert await runtime.execute("UPDATE user_logins SET email = email") == "UPDATE 0"
    assert await runtime.execute("DELETE FROM user_logins") == "DELETE 0"
    assert await runtime.execute("UPDATE clinics SET active = false") == "UPDATE 0"
    assert await runtime.execute("DELETE FROM clinics") == "DELETE 0"
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await runtime.execute(
            "INSERT INTO clinics (id, name, active) VALUES ($1, 'x', true)", uuid.uuid4()
        )
    # The function answers one exact address with its one row, and nothing for a pattern.
    rows = await runtime.fetch("SELECT * FROM healthdb_login_route($1)", email.lower())
    assert [(r["user_id"], r["clinic_id"]) for r in rows] == [(user_id, clinic)]
    assert await runtime.fetch("SELECT * FROM healthdb_login_route('%')") == []
    # Another clinic's scope does not open this clinic's rows either.
    async with runtime.transaction():
        await runtime.execute("SELECT set_config('app.clinic_id', $1, true)", str(uuid.uuid4()))
        assert await runtime.fetchval("SELECT count(*) FROM user_logins") == 0
        assert await runtime.execute("UPDATE clinics SET active = false") == "UPDATE 0"
    # The clinic directory is readable (the rate limiter reads budgets before any scope).
    assert await runtime.fetchval("SELECT active FROM clinics WHERE id = $1", clinic) is True


@pytest.mark.postgres
async def test_every_table_holding_a_clinic_id_is_behind_forced_row_level_security(
    runtime: asyncpg.Connection,
) -> None:
    holding = {
        row["table_name"]
        for row in await runtime.fetch(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND column_name = 'clinic_id'"
        )
    }
    forced = {
        row["relname"]
        for row in await runtime.fetch(
            "SELECT relname FROM pg_class WHERE relrowsecurity AND relforcerowsecurity "
            "AND relnamespace = current_schema()::regnamespace"
        )
    }
    assert holding
    assert holding <= set(walled_tables())
    assert set(walled_tables()) <= forced
    assert "clinics" in forced


@pytest.mark.postgres
async def test_the_runtime_role_cannot_make_itself_an_operator(
    runtime: asyncpg.Connection,
) -> None:
    """Operators are created through the owner from the CLI; the service may only read them."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await runtime.execute(
            "INSERT INTO platform_operators (id, name, key_hash, active) "
            "VALUES ($1, 'me', 'x', true)",
            uuid.uuid4(),
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await runtime.execute("UPDATE platform_operators SET active = true")
