"""Clinics: the tenants. Not itself a tenant table, but behind the walls all the same:
a clinic's row is written only inside that clinic's scope (``__clinic_key__``)."""

from __future__ import annotations

import uuid
from typing import ClassVar

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from healthdb.models.base import Base, Timestamped, new_id
from healthdb.phi.declaration import not_phi


class Clinic(Timestamped, Base):
    __tablename__ = "clinics"
    #: Writes are audited as ``clinic.create`` / ``clinic.update`` / ``clinic.delete``.
    __audit_as__: ClassVar[str] = "clinic"
    #: The column naming the row's own clinic: writable only in that clinic's scope.
    __clinic_key__: ClassVar[str] = "id"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), info=not_phi("the clinic's name"))
    active: Mapped[bool] = mapped_column(default=True)
    rate_limit_per_minute: Mapped[int | None] = mapped_column(default=None)
