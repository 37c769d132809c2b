"""Appointments: per patient, per clinician calendar, overlap checks and cancellation."""

from __future__ import annotations

import builtins
import datetime as dt
import uuid
from typing import Any, ClassVar

from sqlalchemy.orm import InstrumentedAttribute

from healthdb.context import as_uuid
from healthdb.errors import InvalidInput
from healthdb.models import Appointment
from healthdb.repositories.base import Repository
from healthdb.repositories.pagination import DEFAULT_LIMIT, Page

BOOKED = "booked"
CANCELLED = "cancelled"


def _window(start: dt.datetime, end: dt.datetime) -> None:
    for value in (start, end):
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            raise InvalidInput("start and end must be timezone-aware datetimes")
    if end <= start:
        raise InvalidInput("end must be after start")


class AppointmentRepository(Repository[Appointment]):
    """Appointments of one clinic (the walls scope every read)."""

    model = Appointment
    sortable: ClassVar[dict[str, InstrumentedAttribute[Any]]] = {
        "created_at": Appointment.created_at,
        "start_at": Appointment.start_at,
        "end_at": Appointment.end_at,
    }

    async def for_patient(
        self, patient_id: uuid.UUID | str, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
    ) -> Page[Appointment]:
        """A patient's appointments (any status), earliest first."""
        return await self.list(
            cursor=cursor,
            limit=limit,
            sort="start_at",
            where=[Appointment.patient_id == as_uuid(patient_id, "patient_id")],
        )

    async def for_clinician(
        self,
        clinician_id: uuid.UUID | str,
        start: dt.datetime,
        end: dt.datetime,
        *,
        cursor: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> Page[Appointment]:
        """A clinician's appointments (any status) that intersect ``[start, end)``.

        Intersect, not "start inside": a calendar view must show the appointment that
        began before the window and runs into it.
        """
        _window(start, end)
        return await self.list(
            cursor=cursor,
            limit=limit,
            sort="start_at",
            where=[
                Appointment.clinician_id == as_uuid(clinician_id, "clinician_id"),
                Appointment.start_at < end,
                Appointment.end_at > start,
            ],
        )

    async def overlapping(
        self, clinician_id: uuid.UUID | str, start_at: dt.datetime, end_at: dt.datetime
    ) -> builtins.list[Appointment]:
        """Booked appointments of the clinician overlapping ``[start_at, end_at)``.

        Half-open: an appointment ending exactly at ``start_at`` does not overlap.
        """
        _window(start_at, end_at)
        stmt = (
            self._select()
            .where(
                Appointment.clinician_id == as_uuid(clinician_id, "clinician_id"),
                Appointment.status == BOOKED,
                Appointment.start_at < end_at,
                Appointment.end_at > start_at,
            )
            .order_by(Appointment.start_at, Appointment.id)
        )
        return list((await self.session.scalars(stmt)).all())

    async def cancel(self, id: uuid.UUID | str, expected_version: int | None) -> Appointment:
        """Set the status to ``cancelled`` (bumping the version); already cancelled: no-op."""
        obj = await self._load_for_write(id, expected_version)
        if obj.status != CANCELLED:
            await self._apply(obj, {"status": CANCELLED})
        return obj
