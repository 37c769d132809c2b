"""Fixtures for facade-level integration tests (both backends, via ``migrated_url``).

``db`` is a connected :class:`DatabaseService`; its teardown first asserts that every pooled
connection (primary and critical) was returned, then closes it. ``make_db`` builds more
services with other settings and checks them the same way. The migrated databases are shared
by the session, so tests create their own clinics (random UUIDs) with ``make_clinic``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from healthdb.models import Clinic, Patient, User
from healthdb.service import DatabaseService
from healthdb.settings import Settings

MakeDb = Callable[..., Awaitable[DatabaseService]]
MakeClinic = Callable[..., Awaitable[uuid.UUID]]
MakeUser = Callable[..., Awaitable[uuid.UUID]]
MakePatient = Callable[..., Awaitable[uuid.UUID]]

# Small, fast defaults: short retry waits, generous lock wait for the concurrency tests.
DEFAULTS: dict[str, Any] = {
    "pool_size": 5,
    "max_overflow": 5,
    "pool_timeout": 5.0,
    "critical_pool_size": 1,
    "retry_max_wait": 0.05,
    "lock_timeout_ms": 10_000,
}


def assert_pools_idle(db: DatabaseService) -> None:
    primary = db.engines.primary.pool.checkedout()  # type: ignore[attr-defined]
    critical = db.engines.critical.pool.checkedout()  # type: ignore[attr-defined]
    assert primary == 0, f"{primary} primary connection(s) still checked out"
    assert critical == 0, f"{critical} critical connection(s) still checked out"
    if db.engines.driver is not None:
        driver = db.engines.driver.status().checked_out
        assert driver == 0, f"{driver} driver connection(s) still checked out"


@pytest.fixture
async def make_db(migrated_url: str) -> AsyncIterator[MakeDb]:
    """Factory: ``await make_db(pool_size=2, ...)`` -> a connected service, checked and
    closed at teardown."""
    opened: list[DatabaseService] = []

    async def make(**overrides: Any) -> DatabaseService:
        settings = Settings(database_url=migrated_url, **{**DEFAULTS, **overrides})
        service = await DatabaseService.connect(settings)
        opened.append(service)
        return service

    yield make
    try:
        for service in opened:
            if not service.closed:
                assert_pools_idle(service)
    finally:
        for service in opened:
            await service.close()


@pytest.fixture
async def db(make_db: MakeDb) -> DatabaseService:
    return await make_db()


@pytest.fixture
def backend(migrated_url: str) -> str:
    return "postgresql" if migrated_url.startswith("postgresql") else "sqlite"


@pytest.fixture
def make_clinic(migrated_url: str, request: pytest.FixtureRequest) -> MakeClinic:
    """``await make_clinic()`` -> the id of a new clinic, planted by the owner below the
    facade, so that its audit chain starts empty (``healthdb.clinics.create_clinic``, the
    facade's way, audits the creation: tests of that use it directly)."""
    owner = migrated_url
    if migrated_url.startswith("postgresql"):
        owner = str(request.getfixturevalue("pg_admin_migrated_url"))

    async def make(name: str = "Test clinic") -> uuid.UUID:
        clinic_id = uuid.uuid4()
        engine = create_async_engine(Settings(database_url=owner).url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.execute(insert(Clinic).values(id=clinic_id, name=name, active=True))
        finally:
            await engine.dispose()
        return clinic_id

    return make


@pytest.fixture
def make_clinician(db: DatabaseService) -> MakeUser:
    """``await make_clinician(clinic_id)`` -> the id of a new doctor in that clinic."""

    async def make(clinic_id: uuid.UUID, role: str = "doctor") -> uuid.UUID:
        user_id = uuid.uuid4()

        async def op(session: AsyncSession) -> None:
            session.add(
                User(
                    id=user_id,
                    email=f"{user_id.hex[:12]}@example.org",
                    password_hash="x",
                    full_name="Dr Test",
                    role=role,
                )
            )

        async with db.clinic(clinic_id, role="clinic_admin"):
            await db.execute_write(op)
        return user_id

    return make


def patient_fields(**fields: Any) -> dict[str, Any]:
    # Names that no prefix search elsewhere in the suite matches: the databases are shared.
    values: dict[str, Any] = {
        "mrn": f"MRN-{uuid.uuid4().hex[:12]}",
        "given_name": "Quinn",
        "family_name": "Zephyrson",
        "date_of_birth": dt.date(1985, 3, 14),
        "sex": "female",
    }
    values.update(fields)
    return values


@pytest.fixture
def make_patient(db: DatabaseService) -> MakePatient:
    """``await make_patient(clinic_id, **fields)`` -> the id of a new patient."""

    async def make(clinic_id: uuid.UUID, **fields: Any) -> uuid.UUID:
        patient = Patient(**patient_fields(**fields))

        async def op(session: AsyncSession) -> uuid.UUID:
            session.add(patient)
            await session.flush()
            return patient.id

        async with db.clinic(clinic_id, role="doctor"):
            return await db.execute_write(op)

    return make
