"""Staff accounts and their refresh tokens."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import ForeignKeyConstraint, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from healthdb.models.base import Base, Tenant, Timestamped, new_id
from healthdb.phi.declaration import not_phi

if TYPE_CHECKING:
    from healthdb.models.appointment import Appointment


class User(Tenant, Timestamped, Base):
    __tablename__ = "users"
    #: Writes are audited as ``user.create`` / ``user.update`` / ``user.delete``.
    __audit_as__: ClassVar[str] = "user"
    __table_args__ = (
        # Target of composite foreign keys, so a row can only point at a user of its clinic.
        UniqueConstraint("clinic_id", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(
        String(320), unique=True, info=not_phi("a staff member's work login, not a patient's")
    )
    password_hash: Mapped[str] = mapped_column(String(255))
    full_name: Mapped[str] = mapped_column(
        String(200), info=not_phi("a staff member's name, not a patient's")
    )
    role: Mapped[str] = mapped_column(String(32))
    active: Mapped[bool] = mapped_column(default=True)

    # The clinician's calendar, read-side only (see Appointment.clinician).
    appointments: Mapped[list[Appointment]] = relationship(
        "Appointment",
        primaryjoin="and_(User.clinic_id == foreign(Appointment.clinic_id), "
        "User.id == foreign(Appointment.clinician_id))",
        order_by="(Appointment.start_at, Appointment.id)",
        viewonly=True,
    )


class UserLogin(Tenant, Base):
    """Routes an email to its clinic *before* any clinic scope exists (login).

    A tenant table like any other (both walls; forced row-level security since migration
    0008), free of PHI: it holds only what a login needs to pick the clinic. The one read
    that runs before a clinic is known goes through :func:`healthdb.repositories.find_login`,
    which on PostgreSQL calls a narrow ``SECURITY DEFINER`` function returning the one row
    of one exact address, and nothing else.
    """

    __tablename__ = "user_logins"
    __table_args__ = (
        ForeignKeyConstraint(
            ["clinic_id", "user_id"], ["users.clinic_id", "users.id"], ondelete="CASCADE"
        ),
    )

    email: Mapped[str] = mapped_column(
        String(320), primary_key=True, info=not_phi("a staff member's work login")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(unique=True)


class RefreshToken(Tenant, Timestamped, Base):
    __tablename__ = "refresh_tokens"
    __table_args__ = (
        ForeignKeyConstraint(["clinic_id", "user_id"], ["users.clinic_id", "users.id"]),
        Index(None, "family_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(index=True)
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    family_id: Mapped[uuid.UUID] = mapped_column()
    expires_at: Mapped[dt.datetime] = mapped_column()
    used_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
