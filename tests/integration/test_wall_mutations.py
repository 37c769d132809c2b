"""Mutation proofs: each wall is shown to hold on its own, and to be what holds.

1. ORM wall switched off → on PostgreSQL the database wall alone still blocks every
   attempt (and on SQLite, which has no database wall, the same attempts leak: proof that
   switching the ORM wall off really switched it off).
2. The policy replaced by a permissive one, or dropped → the database-wall checks fail.
3. Migration 0008's policies, one by one: ``user_logins``' and ``clinics``' walls, the
   clinic directory the rate limiter reads, and the owner's ``login_lookup`` policy (on a
   database whose owner is not a superuser): each removed, something breaks or leaks.
These run against private databases because they mutate their policies.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from pydantic import SecretStr
from sqlalchemy import event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import ClinicContextRequired, DatabaseService, Settings, UnsafeDatabaseRole
from healthdb.clinics import create_clinic
from healthdb.internal import connection_wall, isolation
from healthdb.migrate import upgrade
from healthdb.models import Clinic, Patient, User, UserLogin
from healthdb.repositories import find_login
from tests.conftest import (
    PG_ADMIN_URL,
    _drop_database,
    _drop_role,
    _dsn,
    new_pg_database,
    provision,
)

CLINIC_MATCH = "clinic_id = (SELECT NULLIF(current_setting('app.clinic_id', true), '')::uuid)"


@pytest.fixture(scope="module")
def private_pg() -> Iterator[tuple[str, str]]:
    """(owner url, runtime url) of a database nobody else uses."""
    name, owner = new_pg_database()
    role = f"hdb_mut_{uuid.uuid4().hex[:10]}"
    asyncio.run(upgrade(owner))
    runtime = provision(owner, role)
    yield owner, runtime
    asyncio.run(_drop_database(name))
    asyncio.run(_drop_role(role))


@asynccontextmanager
async def orm_wall_off(db: DatabaseService) -> AsyncIterator[None]:
    """Remove the application's walls for the duration (the mutation): the ORM wall's
    statement hook, and the connection wall that would refuse what it no longer scopes."""
    engines = [db.engines.primary.sync_engine, db.engines.critical.sync_engine]
    event.remove(isolation.TenantSession, "do_orm_execute", isolation._scope_statement)
    for engine in engines:
        connection_wall.remove(engine)
    try:
        yield
    finally:
        isolation.install(isolation.TenantSession)
        for engine in engines:
            connection_wall.install(engine)


async def _owner_sql(owner_url: str, sql: str) -> None:
    conn = await asyncpg.connect(_dsn(owner_url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _seed(db: DatabaseService) -> dict[uuid.UUID, uuid.UUID]:
    """Two clinics with one patient each; returns clinic -> patient."""
    patients: dict[uuid.UUID, uuid.UUID] = {}
    for name in ("A", "B"):
        clinic = Clinic(id=await create_clinic(db, name), name=name)
        patient = Patient(
            mrn=uuid.uuid4().hex[:8],
            given_name="Mut",
            family_name=name,
            date_of_birth=dt.date(1980, 1, 1),
            sex="other",
        )

        async def add_patient(s: AsyncSession, p: Patient = patient) -> None:
            s.add(p)

        async with db.clinic(clinic.id):
            await db.execute_write(add_patient)
        patients[clinic.id] = patient.id
    return patients


async def leaks(db: DatabaseService, mine: uuid.UUID, foreign_patient: uuid.UUID) -> list[str]:
    """Run the attacks from clinic ``mine``; name every one that reached the foreign row."""
    found: list[str] = []
    async with db.clinic(mine):
        if await db.execute_read(lambda s: s.get(Patient, foreign_patient)) is not None:
            found.append("get")

        async def all_ids(s: AsyncSession) -> list[uuid.UUID]:
            return list((await s.scalars(select(Patient.id))).all())

        ids = await db.execute_read(all_ids)
        if foreign_patient in ids:
            found.append("select")
        count = await db.execute_read(
            lambda s: s.scalar(select(func.count()).where(Patient.id == foreign_patient))
        )
        if count:
            found.append("count")

        async def rename(s: AsyncSession) -> int:
            stmt = update(Patient).where(Patient.id == foreign_patient).values(given_name="X")
            result = await s.execute(stmt.execution_options(synchronize_session=False))
            return int(result.rowcount)  # type: ignore[attr-defined]

        if await db.execute_write(rename):
            found.append("update")
    return found


async def own_rows_visible(db: DatabaseService, mine: uuid.UUID, own_patient: uuid.UUID) -> bool:
    async with db.clinic(mine):
        return await db.execute_read(lambda s: s.get(Patient, own_patient)) is not None


def _settings(url: str, **extra: object) -> Settings:
    return Settings(database_url=SecretStr(url), pool_size=2, max_overflow=0, **extra)  # type: ignore[arg-type]


async def test_with_the_orm_wall_off_the_database_wall_alone_blocks_every_attempt(
    private_pg: tuple[str, str],
) -> None:
    _, runtime = private_pg
    async with DatabaseService.connect(_settings(runtime)) as db:
        patients = await _seed(db)
        (a, _pa), (_b, pb) = patients.items()
        assert await leaks(db, a, pb) == []  # both walls up
        async with orm_wall_off(db):
            assert await leaks(db, a, pb) == []  # the database wall alone


async def test_the_orm_wall_mutation_is_real_sqlite_leaks_without_it(
    sqlite_empty_url: str,
) -> None:
    await upgrade(sqlite_empty_url)
    async with DatabaseService.connect(_settings(sqlite_empty_url)) as db:
        patients = await _seed(db)
        (a, _pa), (_b, pb) = patients.items()
        assert await leaks(db, a, pb) == []
        async with orm_wall_off(db):
            assert set(await leaks(db, a, pb)) == {"get", "select", "count", "update"}


async def test_a_permissive_policy_breaks_the_database_wall_checks(
    private_pg: tuple[str, str],
) -> None:
    owner, runtime = private_pg
    async with DatabaseService.connect(_settings(runtime)) as db:
        patients = await _seed(db)
        (a, _pa), (_b, pb) = patients.items()
    await _owner_sql(
        owner,
        "DROP POLICY clinic_isolation ON patients;"
        " CREATE POLICY clinic_isolation ON patients USING (true) WITH CHECK (true)",
    )
    try:
        # The start-up check reads the policy's expression and refuses it...
        with pytest.raises(UnsafeDatabaseRole):
            await DatabaseService.connect(_settings(runtime))
        # ...and with that check waived, the database-wall attacks detect the leak.
        unchecked = _settings(runtime, enforce_safe_role=False)
        async with DatabaseService.connect(unchecked) as db, orm_wall_off(db):
            assert set(await leaks(db, a, pb)) == {"get", "select", "count", "update"}
    finally:
        await _owner_sql(
            owner,
            "DROP POLICY clinic_isolation ON patients;"
            " CREATE POLICY clinic_isolation ON patients"
            f" USING ({CLINIC_MATCH}) WITH CHECK ({CLINIC_MATCH})",
        )


async def test_a_dropped_policy_is_refused_at_start_and_hides_even_own_rows(
    private_pg: tuple[str, str],
) -> None:
    owner, runtime = private_pg
    async with DatabaseService.connect(_settings(runtime)) as db:
        patients = await _seed(db)
        (a, pa), _ = patients.items()
        assert await own_rows_visible(db, a, pa)
    await _owner_sql(owner, "DROP POLICY clinic_isolation ON patients")
    try:
        with pytest.raises(UnsafeDatabaseRole, match="policy"):
            await DatabaseService.connect(_settings(runtime))
        async with DatabaseService.connect(_settings(runtime, enforce_safe_role=False)) as db:
            # Forced RLS with no policy denies everything: the wall's own-clinic check fails.
            assert not await own_rows_visible(db, a, pa)
    finally:
        await _owner_sql(
            owner,
            "CREATE POLICY clinic_isolation ON patients"
            f" USING ({CLINIC_MATCH}) WITH CHECK ({CLINIC_MATCH})",
        )


# -- migration 0008: each new policy is load-bearing -------------------------------------------

CLINIC_KEY_MATCH = "id = (SELECT NULLIF(current_setting('app.clinic_id', true), '')::uuid)"


async def _runtime_sql(runtime_url: str, sql: str, *args: object) -> str:
    """Run ``sql`` as the runtime role with no clinic set (an injection's view)."""
    conn = await asyncpg.connect(_dsn(runtime_url))
    try:
        return str(await conn.execute(sql, *args))
    finally:
        await conn.close()


async def _logins_seen(runtime_url: str) -> int:
    conn = await asyncpg.connect(_dsn(runtime_url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM user_logins"))
    finally:
        await conn.close()


async def _login_row(db: DatabaseService, clinic: uuid.UUID) -> str:
    email = f"mut-{uuid.uuid4().hex[:10]}@clinic.example"

    async def op(s: AsyncSession) -> None:
        user = User(email=email, password_hash="!", full_name="M", role="nurse")
        s.add(user)
        await s.flush()
        s.add(UserLogin(email=email, user_id=user.id))

    async with db.clinic(clinic):
        await db.execute_write(op)
    return email


def _opened(table: str, match: str) -> tuple[str, str]:
    """(mutation, repair): ``table``'s clinic_isolation replaced by a permissive policy."""
    drop = f"DROP POLICY clinic_isolation ON {table}; CREATE POLICY clinic_isolation ON {table}"
    return f"{drop} USING (true) WITH CHECK (true)", f"{drop} USING ({match}) WITH CHECK ({match})"


@asynccontextmanager
async def _mutated(owner: str, mutation: str, repair: str) -> AsyncIterator[None]:
    await _owner_sql(owner, mutation)
    try:
        yield
    finally:
        await _owner_sql(owner, repair)


async def test_user_logins_policy_is_what_hides_every_clinics_staff_emails(
    private_pg: tuple[str, str],
) -> None:
    owner, runtime = private_pg
    async with DatabaseService.connect(_settings(runtime)) as db:
        await _login_row(db, await create_clinic(db, "L1"))
        await _login_row(db, await create_clinic(db, "L2"))
    assert await _logins_seen(runtime) == 0  # the wall up: no clinic, no login row
    assert await _runtime_sql(runtime, "DELETE FROM user_logins") == "DELETE 0"
    async with _mutated(owner, *_opened("user_logins", CLINIC_MATCH)):
        with pytest.raises(UnsafeDatabaseRole, match="user_logins"):
            await DatabaseService.connect(_settings(runtime))
        assert await _logins_seen(runtime) >= 2  # the leak the policy prevents
        updated = await _runtime_sql(runtime, "UPDATE user_logins SET email = email")
        assert updated != "UPDATE 0"
    assert await _logins_seen(runtime) == 0


async def test_clinics_policy_is_what_stops_deactivating_every_clinic(
    private_pg: tuple[str, str],
) -> None:
    owner, runtime = private_pg
    async with DatabaseService.connect(_settings(runtime)) as db:
        victim = await create_clinic(db, "Victim")
    deactivate = "UPDATE clinics SET active = false WHERE id = $1"
    assert await _runtime_sql(runtime, deactivate, victim) == "UPDATE 0"
    async with _mutated(owner, *_opened("clinics", CLINIC_KEY_MATCH)):
        with pytest.raises(UnsafeDatabaseRole, match="clinics"):
            await DatabaseService.connect(_settings(runtime))
        assert await _runtime_sql(runtime, deactivate, victim) == "UPDATE 1"


async def test_without_the_clinics_policy_not_even_a_clinics_own_scope_may_write(
    private_pg: tuple[str, str],
) -> None:
    owner, runtime = private_pg
    repair = (
        "CREATE POLICY clinic_isolation ON clinics"
        f" USING ({CLINIC_KEY_MATCH}) WITH CHECK ({CLINIC_KEY_MATCH})"
    )
    async with _mutated(owner, "DROP POLICY clinic_isolation ON clinics", repair):
        with pytest.raises(UnsafeDatabaseRole, match="'clinics' lacks its"):
            await DatabaseService.connect(_settings(runtime))
        unchecked = _settings(runtime, enforce_safe_role=False)
        async with DatabaseService.connect(unchecked) as db:
            with pytest.raises(ClinicContextRequired):  # RLS refuses the insert: fail closed
                await create_clinic(db, "Nowhere")


async def test_the_clinic_directory_policy_is_what_the_rate_limiter_reads_through(
    private_pg: tuple[str, str],
) -> None:
    owner, runtime = private_pg
    async with DatabaseService.connect(_settings(runtime)) as db:
        clinic = await create_clinic(db, "Budgeted", rate_limit_per_minute=7)
        assert await db._rate_override(clinic) == 7
    repair = "CREATE POLICY clinic_directory ON clinics FOR SELECT USING (true)"
    async with _mutated(owner, "DROP POLICY clinic_directory ON clinics", repair):
        with pytest.raises(UnsafeDatabaseRole, match="clinic_directory"):
            await DatabaseService.connect(_settings(runtime))
        unchecked = _settings(runtime, enforce_safe_role=False)
        async with DatabaseService.connect(unchecked) as db:
            assert await db._rate_override(clinic) is None  # the override silently lost


@pytest.fixture(scope="module")
def unprivileged_owner() -> Iterator[tuple[str, str]]:
    """(owner url, runtime url) of a database whose owner is NOT a superuser, as in most
    production set-ups: forced row-level security binds it, so only the ``login_lookup``
    policy lets its SECURITY DEFINER function read the login routes."""
    suffix = uuid.uuid4().hex[:10]
    owner_role, runtime_role, name = f"hdb_own_{suffix}", f"hdb_rt_{suffix}", f"hdb_o_{suffix}"
    admin = asyncpg.connect(_dsn(PG_ADMIN_URL))

    async def create() -> None:
        conn = await admin
        try:
            await conn.execute(f'CREATE ROLE "{owner_role}" LOGIN CREATEROLE')
            await conn.execute(f'CREATE DATABASE "{name}" OWNER "{owner_role}"')
        finally:
            await conn.close()

    asyncio.run(create())
    owner = make_url(PG_ADMIN_URL).set(database=name, username=owner_role)
    owner_url = owner.render_as_string(hide_password=False)
    try:
        asyncio.run(upgrade(owner_url))
        yield owner_url, provision(owner_url, runtime_role)
    finally:
        asyncio.run(_drop_database(name))
        asyncio.run(_drop_role(runtime_role))
        asyncio.run(_drop_role(owner_role))


async def test_the_login_lookup_policy_is_what_lets_the_function_find_a_login(
    unprivileged_owner: tuple[str, str],
) -> None:
    owner, runtime = unprivileged_owner
    async with DatabaseService.connect(_settings(runtime)) as db:
        clinic = await create_clinic(db, "Owner not superuser")
        email = await _login_row(db, clinic)
        found = await db.execute_read(lambda s: find_login(s, email))
        assert found is not None
        assert found.clinic_id == clinic
        repair = "CREATE POLICY login_lookup ON user_logins FOR SELECT TO CURRENT_USER USING (true)"
        async with _mutated(owner, "DROP POLICY login_lookup ON user_logins", repair):
            assert await db.execute_read(lambda s: find_login(s, email)) is None
        assert await db.execute_read(lambda s: find_login(s, email)) is not None
    assert await _logins_seen(runtime) == 0  # the owner's policy never reaches the runtime role
