"""Patients: the PHI-bearing table."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import Date, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from healthdb.models.base import Base, Tenant, Timestamped, new_id
from healthdb.phi.crypto import BLIND_INDEX_OF, EncryptedText
from healthdb.phi.declaration import PhiKind, not_phi, phi

if TYPE_CHECKING:
    from healthdb.models.appointment import Appointment


class Patient(Tenant, Timestamped, Base):
    __tablename__ = "patients"
    __table_args__ = (
        UniqueConstraint("clinic_id", "mrn"),
        UniqueConstraint("clinic_id", "id"),
        Index(None, "clinic_id", "family_name", "given_name"),
        Index(None, "clinic_id", "date_of_birth"),
        Index(None, "clinic_id", "ssn_index"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    mrn: Mapped[str] = mapped_column(String(64), info=phi(PhiKind.MRN))
    given_name: Mapped[str] = mapped_column(String(200), info=phi(PhiKind.NAME))
    family_name: Mapped[str] = mapped_column(String(200), info=phi(PhiKind.NAME))
    date_of_birth: Mapped[dt.date] = mapped_column(Date, info=phi(PhiKind.DOB))
    sex: Mapped[str] = mapped_column(String(16), info=phi(PhiKind.DEMOGRAPHIC))
    phone: Mapped[str | None] = mapped_column(String(32), default=None, info=phi(PhiKind.PHONE))
    email: Mapped[str | None] = mapped_column(String(320), default=None, info=phi(PhiKind.EMAIL))
    address: Mapped[str | None] = mapped_column(
        String(500), default=None, info=phi(PhiKind.ADDRESS)
    )
    # AES-GCM at rest (healthdb.phi.crypto); looked up by its blind index, never compared.
    ssn: Mapped[str | None] = mapped_column(
        EncryptedText("patients.ssn"), default=None, info=phi(PhiKind.SSN)
    )
    ssn_index: Mapped[str | None] = mapped_column(
        String(80),
        default=None,
        info={
            **not_phi("HMAC blind index of the SSN; irreversible without the index key"),
            BLIND_INDEX_OF: "ssn",
        },
    )
    # AES-GCM at rest like the SSN; nothing searches notes, so they need no blind index.
    notes: Mapped[str | None] = mapped_column(
        EncryptedText("patients.notes"), default=None, info=phi(PhiKind.CLINICAL_NOTE)
    )
    version: Mapped[int] = mapped_column(Integer, default=1)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    # Read-side only (see Appointment.patient): joined on (clinic_id, id), never written.
    appointments: Mapped[list[Appointment]] = relationship(
        "Appointment",
        primaryjoin="and_(Patient.clinic_id == foreign(Appointment.clinic_id), "
        "Patient.id == foreign(Appointment.patient_id))",
        order_by="(Appointment.start_at, Appointment.id)",
        viewonly=True,
    )

    __mapper_args__ = {"version_id_col": version}
