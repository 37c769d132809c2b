"""Booking an appointment without the ORM: a command (:mod:`healthdb.command`).

``db.execute_write(appointment_commands.book(patient_id=..., clinician_id=..., start_at=...,
end_at=...), QueryOptions.for_phi("scheduling"))`` books the slot or raises a typed error:

* :class:`InvalidClinician`: the clinician is not an active doctor or nurse of the clinic;
* :class:`UnknownPatient`: the patient is not a visible patient of the clinic;
* :class:`SlotTaken`: the clinician already has a booked appointment overlapping
  ``[start_at, end_at)`` (half-open: back-to-back bookings are fine).

A clinician cannot be double-booked. On PostgreSQL the first statement locks the
clinician's row (``SELECT … FOR UPDATE``), so concurrent bookings of one clinician queue;
the second, a guarded ``INSERT … SELECT … WHERE EXISTS (patient) AND NOT EXISTS (overlap)``,
runs after the lock is granted and so (read committed: a new snapshot per statement) sees
every booking committed before it. Three round trips with the audit row and the commit,
where the ORM path needed seven. On SQLite the same checks run through the ORM inside
``BEGIN IMMEDIATE``, which serialises writers. Both paths write one ``phi.create`` audit
row (with ``reason`` among its fields when one is given) and read no patient PHI.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb.cache import table_tag
from healthdb.command import Fallback, Outcome, audit_row
from healthdb.context import ClinicScope, Role, as_uuid
from healthdb.errors import ConflictError, InvalidInput
from healthdb.models import Appointment, Patient, User
from healthdb.models.base import new_id, utcnow
from healthdb.repositories.appointment_views import BY_ID, AppointmentRecord

__all__ = ["CLINICIAN_ROLES", "Booking", "InvalidClinician", "SlotTaken", "UnknownPatient", "book"]

#: Roles that can be booked.
CLINICIAN_ROLES = frozenset({Role.DOCTOR.value, Role.NURSE.value})
MAX_REASON = 500
BOOKED = "booked"


class InvalidClinician(InvalidInput):
    """The clinician is not an active doctor or nurse of the caller's clinic (missing, of
    another clinic, inactive or of another role: the same error for all)."""

    code = "invalid_clinician"


class UnknownPatient(InvalidInput):
    """The patient is not a visible patient of the caller's clinic (missing, of another
    clinic or deleted: the same error for all)."""

    code = "unknown_patient"


class SlotTaken(ConflictError):
    """The clinician already has a booked appointment overlapping the requested window."""

    code = "slot_taken"


_LOCK_CLINICIAN = "SELECT role, active FROM users WHERE id = $1 AND clinic_id = $2 FOR UPDATE"
_FIELDS = ", ".join(BY_ID.field_names)
# $1 id, $2 clinic, $3 patient, $4 clinician, $5 start, $6 end, $7 reason, $8 now.
_INSERT = f"""
INSERT INTO appointments
    (id, clinic_id, patient_id, clinician_id, start_at, end_at, status, reason, version,
     created_at, updated_at)
SELECT $1::uuid, $2::uuid, $3::uuid, $4::uuid, $5::timestamptz, $6::timestamptz,
       '{BOOKED}', $7::varchar, 1, $8::timestamptz, $8::timestamptz
WHERE EXISTS (SELECT 1 FROM patients p
              WHERE p.id = $3 AND p.clinic_id = $2 AND p.deleted_at IS NULL)
  AND NOT EXISTS (SELECT 1 FROM appointments a
                  WHERE a.clinic_id = $2 AND a.clinician_id = $4 AND a.status = '{BOOKED}'
                    AND a.start_at < $6 AND a.end_at > $5)
RETURNING {_FIELDS}
"""  # noqa: S608 (constants only)
_PATIENT_VISIBLE = "SELECT 1 FROM patients WHERE id = $1 AND clinic_id = $2 AND deleted_at IS NULL"


@dataclass(frozen=True, slots=True)
class Booking:
    """A bound booking: the :class:`~healthdb.command.Command` ``db.execute_write`` runs."""

    patient_id: uuid.UUID
    clinician_id: uuid.UUID
    start_at: dt.datetime
    end_at: dt.datetime
    reason: str | None

    name = "appointments.book"

    @property
    def fallback(self) -> Fallback:
        return self._book_orm

    async def run(
        self, conn: Any, scope: ClinicScope, dialect: Dialect
    ) -> Outcome[AppointmentRecord]:
        clinic = scope.clinic_id
        clinician = await conn.fetchrow(_LOCK_CLINICIAN, self.clinician_id, clinic)
        _check_clinician(None if clinician is None else (clinician["role"], clinician["active"]))
        key, now = new_id(), utcnow()
        row = await conn.fetchrow(
            _INSERT,
            key,
            clinic,
            self.patient_id,
            self.clinician_id,
            self.start_at,
            self.end_at,
            self.reason,
            now,
        )
        if row is None:
            if await conn.fetchval(_PATIENT_VISIBLE, self.patient_id, clinic) is None:
                raise _unknown_patient()
            raise _slot_taken()
        converted = BY_ID.convert([row], dialect, scope)
        audit = [audit_row(scope, "phi.create", "appointments", key, self._phi_fields())]
        tags = {table_tag("appointments", clinic)}
        return Outcome(BY_ID.records(converted, scope)[0], audit, tags)

    def result_of(self, entity: Any) -> AppointmentRecord:
        return BY_ID.record(*(getattr(entity, name) for name in BY_ID.field_names))

    def _phi_fields(self) -> list[str]:
        return [] if self.reason is None else ["reason"]

    async def _book_orm(self, session: AsyncSession) -> Appointment:
        """The same booking through the ORM (SQLite: ``BEGIN IMMEDIATE`` serialises it)."""
        clinician = await session.get(User, self.clinician_id)
        _check_clinician(None if clinician is None else (clinician.role, clinician.active))
        visible = select(Patient.id).where(
            Patient.id == self.patient_id, Patient.deleted_at.is_(None)
        )
        if await session.scalar(visible) is None:
            raise _unknown_patient()
        overlap = select(Appointment.id).where(
            Appointment.clinician_id == self.clinician_id,
            Appointment.status == BOOKED,
            Appointment.start_at < self.end_at,
            Appointment.end_at > self.start_at,
        )
        if await session.scalar(overlap.limit(1)) is not None:
            raise _slot_taken()
        appointment = Appointment(
            patient_id=self.patient_id,
            clinician_id=self.clinician_id,
            start_at=self.start_at,
            end_at=self.end_at,
            reason=self.reason,
        )
        session.add(appointment)
        await session.flush()
        return appointment


def book(
    *,
    patient_id: uuid.UUID | str,
    clinician_id: uuid.UUID | str,
    start_at: dt.datetime,
    end_at: dt.datetime,
    reason: str | None = None,
) -> Booking:
    """Book ``[start_at, end_at)`` with the clinician for the patient (times timezone-aware)."""
    for value in (start_at, end_at):
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            raise InvalidInput("start_at and end_at must be timezone-aware datetimes")
    if end_at <= start_at:
        raise InvalidInput("end_at must be after start_at")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise InvalidInput(f"reason must be a string of at most {MAX_REASON} characters")
    return Booking(
        as_uuid(patient_id, "patient_id"),
        as_uuid(clinician_id, "clinician_id"),
        start_at.astimezone(dt.UTC),
        end_at.astimezone(dt.UTC),
        reason,
    )


def _check_clinician(found: tuple[str, bool] | None) -> None:
    if found is None or not found[1] or found[0] not in CLINICIAN_ROLES:
        raise InvalidClinician("clinician_id must name an active doctor or nurse of your clinic")


def _unknown_patient() -> UnknownPatient:
    return UnknownPatient("patient_id must name a patient of your clinic")


def _slot_taken() -> SlotTaken:
    return SlotTaken("the clinician already has an appointment at that time")
