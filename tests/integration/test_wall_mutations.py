"""Mutation proofs: each wall is shown to hold on its own, and to be what holds.

1. ORM wall switched off → on PostgreSQL the database wall alone still blocks every
   attempt (and on SQLite, which has no database wall, the same attempts leak: proof that
   switching the ORM wall off really switched it off).
2. The policy replaced by a permissive one, or dropped → the database-wall checks fail.
These run against a private database because they mutate its policies.
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
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import DatabaseService, Settings, UnsafeDatabaseRole
from healthdb.internal import connection_wall, isolation
from healthdb.migrate import upgrade
from healthdb.models import Clinic, Patient
from tests.conftest import _drop_database, _drop_role, _dsn, new_pg_database, provision

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
        clinic = Clinic(id=uuid.uuid4(), name=name)

        async def add_clinic(s: AsyncSession, c: Clinic = clinic) -> None:
            s.add(c)

        await db.execute_write(add_clinic)
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
