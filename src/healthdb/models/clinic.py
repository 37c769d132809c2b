"""Clinics: the tenants. Not itself a tenant table."""

from __future__ import annotations

import uuid

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from healthdb.models.base import Base, Timestamped, new_id
from healthdb.phi.declaration import not_phi


class Clinic(Timestamped, Base):
    __tablename__ = "clinics"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), info=not_phi("the clinic's name"))
    active: Mapped[bool] = mapped_column(default=True)
    rate_limit_per_minute: Mapped[int | None] = mapped_column(default=None)
