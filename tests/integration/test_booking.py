"""The booking command (healthdb.repositories.appointment_commands) on both backends: the
slot is booked once, references outside the clinic are refused with typed errors, and the
audit row commits with the appointment."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import DatabaseService, IntegrityViolation, InvalidInput, QueryOptions, Settings
from healthdb.models import Appointment, AuditEvent, User
from healthdb.repositories import PatientRepository, appointment_commands
from healthdb.repositories.appointment_commands import (
    InvalidClinician,
    SlotTaken,
    UnknownPatient,
    book,
)
from healthdb.repositories.appointment_views import AppointmentRecord
from tests.integration.conftest import DEFAULTS, MakeClinic, MakePatient, MakeUser

PHI = QueryOptions.for_phi("test.booking")
T0 = dt.datetime(2031, 5, 6, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


async def creates(db: DatabaseService, clinic: uuid.UUID) -> list[tuple[str, str, list[str]]]:
    async def rows(session: AsyncSession) -> list[tuple[str, str, list[str]]]:
        stmt = select(AuditEvent.action, AuditEvent.resource_id, AuditEvent.phi_fields).where(
            AuditEvent.clinic_id == clinic, AuditEvent.resource_type == "appointments"
        )
        return [(a, str(r), list(f)) for a, r, f in (await session.execute(stmt)).all()]

    async with db.clinic(clinic, role="clinic_admin"):
        return await db.execute_read(rows)


async def booked(db: DatabaseService, clinic: uuid.UUID, clinician: uuid.UUID) -> int:
    async def count(session: AsyncSession) -> int:
        stmt = select(func.count()).where(
            Appointment.clinician_id == clinician, Appointment.status == "booked"
        )
        return int(await session.scalar(stmt) or 0)

    async with db.clinic(clinic, role="clinic_admin"):
        return await db.execute_read(count)


async def test_a_booking_returns_the_appointment_and_audits_its_creation(
    db: DatabaseService,
    make_clinic: MakeClinic,
    make_patient: MakePatient,
    make_clinician: MakeUser,
) -> None:
    clinic = await make_clinic()
    patient, doctor = await make_patient(clinic), await make_clinician(clinic)
    async with db.clinic(clinic, role="receptionist"):
        record = await db.execute_write(
            book(
                patient_id=patient,
                clinician_id=doctor,
                start_at=T0,
                end_at=T0 + HOUR,
                reason="canary-visit-reason",
            ),
            PHI,
        )
    assert isinstance(record, AppointmentRecord)
    assert (record.patient_id, record.clinician_id) == (patient, doctor)
    assert (record.start_at, record.end_at, record.status, record.version) == (
        T0,
        T0 + HOUR,
        "booked",
        1,
    )
    # One audit row, the creation, naming the PHI written; no read of the patient's PHI.
    assert await creates(db, clinic) == [("phi.create", str(record.id), ["reason"])]
    async with db.clinic(clinic, role="doctor"):
        stored = await db.execute_read(lambda s: s.get(Appointment, record.id), PHI)
    assert stored is not None
    assert stored.reason == "canary-visit-reason"


async def test_overlaps_are_refused_and_back_to_back_is_fine(
    db: DatabaseService,
    make_clinic: MakeClinic,
    make_patient: MakePatient,
    make_clinician: MakeUser,
) -> None:
    clinic = await make_clinic()
    patient, doctor = await make_patient(clinic), await make_clinician(clinic)
    async with db.clinic(clinic, role="doctor"):
        first = await db.execute_write(
            book(patient_id=patient, clinician_id=doctor, start_at=T0, end_at=T0 + HOUR), PHI
        )
        with pytest.raises(SlotTaken):
            await db.execute_write(
                book(
                    patient_id=patient,
                    clinician_id=doctor,
                    start_at=T0 + HOUR / 2,
                    end_at=T0 + 2 * HOUR,
                ),
                PHI,
            )
        after = await db.execute_write(
            book(patient_id=patient, clinician_id=doctor, start_at=T0 + HOUR, end_at=T0 + 2 * HOUR),
            PHI,
        )
    assert after.start_at == first.end_at
    assert await booked(db, clinic, doctor) == 2
    assert [a for a, _, _ in await creates(db, clinic)] == ["phi.create", "phi.create"]


async def test_references_outside_the_clinic_are_typed_errors(
    db: DatabaseService,
    make_clinic: MakeClinic,
    make_patient: MakePatient,
    make_clinician: MakeUser,
) -> None:
    mine, theirs = await make_clinic(), await make_clinic()
    patient, doctor = await make_patient(mine), await make_clinician(mine)
    receptionist = await make_clinician(mine, role="receptionist")
    their_patient, their_doctor = await make_patient(theirs), await make_clinician(theirs)
    gone = await make_patient(mine)
    async with db.clinic(mine, role="doctor"):
        await db.execute_write(lambda s: PatientRepository(s).soft_delete(gone), PHI)
        for clinician in (their_doctor, receptionist, uuid.uuid4()):
            with pytest.raises(InvalidClinician):
                await db.execute_write(
                    book(patient_id=patient, clinician_id=clinician, start_at=T0, end_at=T0 + HOUR),
                    PHI,
                )
        for other in (their_patient, gone, uuid.uuid4()):
            with pytest.raises(UnknownPatient):
                await db.execute_write(
                    book(patient_id=other, clinician_id=doctor, start_at=T0, end_at=T0 + HOUR),
                    PHI,
                )
    assert await booked(db, mine, doctor) == 0
    assert await booked(db, theirs, their_doctor) == 0
    assert await creates(db, mine) == []


async def test_an_inactive_clinician_cannot_be_booked(
    db: DatabaseService,
    make_clinic: MakeClinic,
    make_patient: MakePatient,
    make_clinician: MakeUser,
) -> None:
    clinic = await make_clinic()
    patient, nurse = await make_patient(clinic), await make_clinician(clinic, role="nurse")

    async def deactivate(session: AsyncSession) -> None:
        user = await session.get(User, nurse)
        assert user is not None
        user.active = False

    async with db.clinic(clinic, role="doctor"):
        await db.execute_write(
            book(patient_id=patient, clinician_id=nurse, start_at=T0, end_at=T0 + HOUR), PHI
        )
    async with db.clinic(clinic, role="clinic_admin"):
        await db.execute_write(deactivate)
    async with db.clinic(clinic, role="doctor"):
        with pytest.raises(InvalidClinician):
            await db.execute_write(
                book(
                    patient_id=patient, clinician_id=nurse, start_at=T0 + HOUR, end_at=T0 + 2 * HOUR
                ),
                PHI,
            )


@pytest.mark.parametrize(
    ("start", "end", "reason", "message"),
    [
        (T0, T0, None, "after"),
        (T0 + HOUR, T0, None, "after"),
        (T0.replace(tzinfo=None), T0 + HOUR, None, "timezone-aware"),
        (T0, T0 + HOUR, "x" * 501, "at most 500"),
    ],
)
def test_bad_bookings_are_refused_before_any_io(
    start: dt.datetime, end: dt.datetime, reason: str | None, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        book(
            patient_id=uuid.uuid4(),
            clinician_id=uuid.uuid4(),
            start_at=start,
            end_at=end,
            reason=reason,
        )


@pytest.mark.parametrize("migrated_url", ["postgres"], indirect=True)
async def test_concurrent_bookings_of_one_slot_book_it_once(
    db: DatabaseService,
    make_clinic: MakeClinic,
    make_patient: MakePatient,
    make_clinician: MakeUser,
) -> None:
    """Eight bookings of overlapping windows at once: the clinician lock queues them, so
    exactly one wins and the others see it (without the lock, several win)."""
    clinic = await make_clinic()
    patient, doctor = await make_patient(clinic), await make_clinician(clinic)

    async def attempt(i: int) -> bool:
        start = T0 + dt.timedelta(minutes=i)
        async with db.clinic(clinic, role="doctor"):
            try:
                await db.execute_write(
                    book(
                        patient_id=patient, clinician_id=doctor, start_at=start, end_at=start + HOUR
                    ),
                    PHI,
                )
            except SlotTaken:
                return False
        return True

    for _ in range(3):
        results = await asyncio.gather(*(attempt(i) for i in range(8)))
        assert results.count(True) == 1
        assert await booked(db, clinic, doctor) == 1
        async with db.clinic(clinic, role="doctor"):
            await db.execute_write(
                lambda s: s.execute(
                    update(Appointment)
                    .where(Appointment.clinician_id == doctor)
                    .values(status="cancelled")
                ),
                PHI,
            )


# -- the mutation: without the command's clinic filter --------------------------------------


@contextmanager
def patient_filter_off() -> Iterator[None]:
    original = appointment_commands._INSERT
    appointment_commands._INSERT = original.replace("AND p.clinic_id = $2 ", "")
    assert original != appointment_commands._INSERT
    try:
        yield
    finally:
        appointment_commands._INSERT = original


@pytest.mark.parametrize("migrated_url", ["postgres"], indirect=True)
async def test_the_patient_filter_is_what_refuses_another_clinics_patient(
    pg_admin_migrated_url: str,
    make_clinic: MakeClinic,
    make_patient: MakePatient,
    make_clinician: MakeUser,
) -> None:
    """As the table owner (no row-level security) the command's own clinic filter answers
    UnknownPatient; without it the insert reaches the composite foreign key, the wall below,
    which still refuses it (an integrity error instead of the typed refusal)."""
    settings = Settings(database_url=pg_admin_migrated_url, enforce_safe_role=False, **DEFAULTS)
    mine, theirs = await make_clinic(), await make_clinic()
    doctor, foreign = await make_clinician(mine), await make_patient(theirs)
    booking = book(patient_id=foreign, clinician_id=doctor, start_at=T0, end_at=T0 + HOUR)
    async with DatabaseService.connect(settings) as owner_db, owner_db.clinic(mine, role="doctor"):
        with pytest.raises(UnknownPatient):
            await owner_db.execute_write(booking, PHI)
        with patient_filter_off(), pytest.raises(IntegrityViolation):
            await owner_db.execute_write(booking, PHI)
