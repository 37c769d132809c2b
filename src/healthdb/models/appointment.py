"""Appointments between a patient and a clinician of the same clinic."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, ForeignKeyConstraint, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from healthdb.models.base import Base, Tenant, Timestamped, new_id
from healthdb.phi.declaration import PhiKind, phi

if TYPE_CHECKING:
    from healthdb.models.patient import Patient
    from healthdb.models.user import User


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
    reason: Mapped[str | None] = mapped_column(
        String(500), default=None, info=phi(PhiKind.VISIT_REASON)
    )
    version: Mapped[int] = mapped_column(Integer, default=1)

    # Read-side relationships. The join includes clinic_id (the composite foreign keys), so a
    # relationship can only ever reach rows of the appointment's own clinic; viewonly keeps
    # the write path explicit (patient_id / clinician_id are set directly).
    patient: Mapped[Patient] = relationship(
        "Patient",
        primaryjoin="and_(foreign(Appointment.clinic_id) == Patient.clinic_id, "
        "foreign(Appointment.patient_id) == Patient.id)",
        viewonly=True,
        uselist=False,
    )
    clinician: Mapped[User] = relationship(
        "User",
        primaryjoin="and_(foreign(Appointment.clinic_id) == User.clinic_id, "
        "foreign(Appointment.clinician_id) == User.id)",
        viewonly=True,
        uselist=False,
    )

    __mapper_args__ = {"version_id_col": version}
