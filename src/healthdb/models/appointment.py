"""Appointments between a patient and a clinician of the same clinic."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import CheckConstraint, ForeignKeyConstraint, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from healthdb.models.base import Base, Tenant, Timestamped, new_id


class Appointment(Tenant, Timestamped, Base):
    __tablename__ = "appointments"
    __table_args__ = (
        # Composite keys: an appointment cannot reference another clinic's patient or clinician.
        ForeignKeyConstraint(["clinic_id", "patient_id"], ["patients.clinic_id", "patients.id"]),
        ForeignKeyConstraint(["clinic_id", "clinician_id"], ["users.clinic_id", "users.id"]),
        CheckConstraint("end_at > start_at", name="ends_after_start"),
        Index(None, "clinic_id", "clinician_id", "start_at"),
        Index(None, "clinic_id", "patient_id", "start_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    patient_id: Mapped[uuid.UUID] = mapped_column()
    clinician_id: Mapped[uuid.UUID] = mapped_column()
    start_at: Mapped[dt.datetime] = mapped_column()
    end_at: Mapped[dt.datetime] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="booked")
    reason: Mapped[str | None] = mapped_column(String(500), default=None)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}
