"""Appointment reads without the ORM: :class:`AppointmentRecord` and the view that fills it.

``db.execute_read(appointment_views.by_id(aid), QueryOptions.for_phi())`` returns the
appointment :meth:`AppointmentRepository.get` would, as a frozen record with the visit
reason masked for the caller's role, audited (one ``phi.read`` row per appointment).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, bindparam, select

from healthdb.context import as_uuid
from healthdb.models import Appointment
from healthdb.view import Read, View

__all__ = ["BY_ID", "AppointmentRecord", "by_id"]


@dataclass(frozen=True, slots=True)
class AppointmentRecord:
    """An appointment as read for a caller (no tenancy column). ``reason`` is PHI and
    arrives masked for the caller's role."""

    id: uuid.UUID
    patient_id: uuid.UUID
    clinician_id: uuid.UUID
    start_at: dt.datetime
    end_at: dt.datetime
    status: str
    reason: str | None
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


_APPOINTMENTS = cast(Table, Appointment.__table__)

BY_ID: View[AppointmentRecord] = View(
    select(*[_APPOINTMENTS.c[name] for name in AppointmentRecord.__dataclass_fields__]).where(
        _APPOINTMENTS.c.id == bindparam("id")
    ),
    AppointmentRecord,
    name="appointments.by_id",
)


def by_id(appointment_id: uuid.UUID | str) -> Read[AppointmentRecord | None]:
    """The appointment with this id (any status), or ``None``."""
    return BY_ID.one(id=as_uuid(appointment_id, "appointment_id"))
