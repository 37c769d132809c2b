"""The Alembic history: one set of migrations for SQLite and PostgreSQL, matching the models."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from healthdb import migrate
from healthdb.engine import create_engine
from healthdb.models import Appointment, Clinic, User
from healthdb.settings import Settings

BACKENDS = [
    pytest.param("sqlite_empty_url", id="sqlite"),
    pytest.param("pg_empty_url", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest) -> str:
    """An empty database, once per backend."""
    return str(request.getfixturevalue(request.param))


def _engine(url: str) -> AsyncEngine:
    settings = Settings(database_url=url)
    return create_engine(settings.url, settings, pool_size=1, max_overflow=0)


def test_head_revision_is_every_table_walled() -> None:
    assert migrate.head_revision() == "0008"


async def test_empty_database_reaches_head_in_one_call(empty_url: str) -> None:
    engine = _engine(empty_url)
    try:
        assert await migrate.current_revision(engine) is None
        assert not await migrate.is_at_head(engine)

        await migrate.upgrade(empty_url)

        assert await migrate.current_revision(engine) == migrate.head_revision()
        assert await migrate.is_at_head(engine)
    finally:
        await engine.dispose()


async def test_upgrade_twice_is_harmless(empty_url: str) -> None:
    await migrate.upgrade(empty_url)
    await migrate.upgrade(empty_url)

    engine = _engine(empty_url)
    try:
        assert await migrate.is_at_head(engine)
    finally:
        await engine.dispose()
    assert await migrate.check_models_match(empty_url) == []


async def test_migrations_match_models(empty_url: str) -> None:
    """Catches a migration drifting from the models (run autogenerate to fix it)."""
    await migrate.upgrade(empty_url)
    assert await migrate.check_models_match(empty_url) == []


async def test_drift_is_reported(empty_url: str) -> None:
    await migrate.upgrade(empty_url)
    engine = _engine(empty_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP INDEX ix_patients_clinic_id_date_of_birth"))
    finally:
        await engine.dispose()

    diffs = await migrate.check_models_match(empty_url)
    assert len(diffs) == 1
    assert "ix_patients_clinic_id_date_of_birth" in repr(diffs[0])


async def test_unmigrated_database_is_reported_as_drift(empty_url: str) -> None:
    assert await migrate.check_models_match(empty_url) != []


@pytest.mark.postgres
async def test_concurrent_upgrades_on_postgres_both_succeed(pg_empty_url: str) -> None:
    await asyncio.gather(*(migrate.upgrade(pg_empty_url) for _ in range(3)))

    engine = _engine(pg_empty_url)
    try:
        assert await migrate.is_at_head(engine)
    finally:
        await engine.dispose()
    assert await migrate.check_models_match(pg_empty_url) == []


async def test_concurrent_upgrades_on_sqlite_both_succeed(sqlite_empty_url: str) -> None:
    await asyncio.gather(migrate.upgrade(sqlite_empty_url), migrate.upgrade(sqlite_empty_url))
    assert await migrate.check_models_match(sqlite_empty_url) == []


@pytest.mark.postgres
async def test_plain_driver_urls_are_accepted(pg_empty_url: str, sqlite_empty_url: str) -> None:
    plain_pg = pg_empty_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    plain_sqlite = sqlite_empty_url.replace("sqlite+aiosqlite:///", "sqlite:///", 1)
    for url in (plain_pg, plain_sqlite):
        await migrate.upgrade(url)
        assert await migrate.check_models_match(url) == []


async def test_foreign_keys_are_enforced(empty_url: str) -> None:
    await migrate.upgrade(empty_url)
    clinic_id, clinician_id = uuid.uuid4(), uuid.uuid4()
    start = dt.datetime(2030, 1, 1, 9, tzinfo=dt.UTC)
    engine = _engine(empty_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(Clinic).values(id=clinic_id, name="North"))
            await conn.execute(
                insert(User).values(
                    id=clinician_id,
                    clinic_id=clinic_id,
                    email=f"{clinician_id}@example.org",
                    password_hash="x",
                    full_name="Dr Who",
                    role="clinician",
                )
            )

        missing_patient = insert(Appointment).values(
            clinic_id=clinic_id,
            patient_id=uuid.uuid4(),
            clinician_id=clinician_id,
            start_at=start,
            end_at=start + dt.timedelta(minutes=30),
        )
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(missing_patient)

        async with engine.connect() as conn:
            count = await conn.scalar(text("SELECT count(*) FROM appointments"))
        assert count == 0
    finally:
        await engine.dispose()
