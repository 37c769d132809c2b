"""A scripted tour of the facade on a fresh database: ``healthdb demo``.

Every facade operation runs once for real and the outcome is printed; nothing is faked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable

from faker import Faker
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import (
    BatchResult,
    ClinicContextRequired,
    ConflictError,
    DatabaseService,
    QueryOptions,
    Settings,
    TransactionOptions,
    keys,
)
from healthdb.clinics import create_clinic
from healthdb.migrate import upgrade
from healthdb.models import Appointment, Patient, User
from healthdb.repositories import PatientRepository

Say = Callable[[str], None]


async def run_demo(settings: Settings, say: Say, *, patients: int = 2000) -> None:
    """Migrate ``settings``' database, then exercise all six facade operations."""
    await upgrade(settings.admin_url)
    say("migrated the database to head")
    async with DatabaseService.connect(settings) as db:
        clinic_id = await create_clinic(db, "Demo Clinic")  # execute_write in its own scope
        say(f"execute_write: created clinic {clinic_id}")
        try:
            await db.execute_read(lambda s: s.scalar(select(func.count()).select_from(Patient)))
        except ClinicContextRequired:
            say("execute_read outside a clinic scope on a tenant table: refused (fail closed)")
        async with db.clinic(clinic_id, role="doctor", purpose="treatment"):
            await _tour(db, clinic_id, say, patients)
        report = await db.health()
        say(f"health: ok={report.ok} dialect={report.dialect} latency={report.latency_ms:.2f} ms")


async def _tour(db: DatabaseService, clinic_id: uuid.UUID, say: Say, patients: int) -> None:
    fake = Faker()
    Faker.seed(7)
    rows = [_fake_patient(fake, i) for i in range(patients)]
    rows.append(dict(rows[0]))  # a duplicate MRN: must be reported, not dropped
    result: BatchResult[None] = await db.execute_batch(rows, Patient, chunk_size=500)
    say(
        f"execute_batch: {result.succeeded}/{result.total} patients inserted; "
        f"failed: {[(f.index, f.code) for f in result.failures]}"
    )
    first = await db.execute_read(lambda s: PatientRepository(s).list(limit=1, sort="family_name"))
    pid = first.items[0].id
    # PHI is never cached (every PHI read is audited): the cache holds the row's version.
    cached = QueryOptions.for_read("demo.version").cached(keys.for_patient(clinic_id, pid))
    await db.execute_read(lambda s: _version(s, pid), cached)
    await db.execute_read(lambda s: _version(s, pid), cached)
    say(f"execute_read (cached strategy): hit ratio {db.cache.store.hit_ratio:.2f}")
    clinician = await db.execute_write(_add_clinician)
    appt = await db.execute_transaction(
        lambda s: _book(s, pid, clinician), TransactionOptions.pessimistic().named("demo.book")
    )
    say(f"execute_transaction (pessimistic): booked appointment {appt}")
    await db.execute_transaction(
        lambda s: _rename(s, pid), TransactionOptions.optimistic().named("demo.rename")
    )
    fresh = await db.execute_read(lambda s: _version(s, pid), cached)
    say(f"execute_transaction (optimistic): version now {fresh}; cache invalidated")
    try:
        await db.execute_write(lambda s: PatientRepository(s).update(pid, expected_version=1))
    except ConflictError:
        say("stale version update: ConflictError")
    count = await db.execute_with_clinic_context(
        clinic_id, lambda s: s.scalar(select(func.count()).select_from(Patient))
    )
    say(f"execute_with_clinic_context: {count} patients visible in this clinic")
    chart = await db.execute_critical(
        lambda s: s.get(Patient, pid), reason="demo: unconscious patient, chart needed"
    )
    assert chart is not None
    say(f"execute_critical: read chart of {chart.mrn} through the reserved pool")


def _fake_patient(fake: Faker, i: int) -> dict[str, object]:
    return {
        "mrn": f"MRN-{i:06d}",
        "given_name": fake.first_name(),
        "family_name": fake.last_name(),
        "date_of_birth": fake.date_of_birth(minimum_age=0, maximum_age=100),
        "sex": fake.random_element(["female", "male", "other"]),
        "phone": fake.numerify("+1555#######"),
        "email": fake.email(),
    }


async def _add_clinician(session: AsyncSession) -> uuid.UUID:
    user = User(
        email=f"dr-{uuid.uuid4().hex[:8]}@demo.example",
        password_hash="!",  # noqa: S106 - not a hash: this demo account cannot log in
        full_name="Dr Demo",
        role="doctor",
    )
    session.add(user)
    await session.flush()
    return user.id


async def _book(session: AsyncSession, patient_id: uuid.UUID, clinician_id: uuid.UUID) -> uuid.UUID:
    await session.get(User, clinician_id)  # locked FOR UPDATE: serialises this clinician's bookings
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=1)
    appt = Appointment(
        patient_id=patient_id,
        clinician_id=clinician_id,
        start_at=start,
        end_at=start + dt.timedelta(minutes=30),
    )
    session.add(appt)
    await session.flush()
    return appt.id


async def _rename(session: AsyncSession, patient_id: uuid.UUID) -> None:
    patient = await session.get(Patient, patient_id)
    assert patient is not None
    patient.notes = "demo: updated under optimistic locking"


def main(settings: Settings, say: Say) -> None:
    asyncio.run(run_demo(settings, say))


async def _version(session: AsyncSession, pid: uuid.UUID) -> int | None:
    version: int | None = await session.scalar(select(Patient.version).where(Patient.id == pid))
    return version
