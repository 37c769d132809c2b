"""Platform operators: the people who run the service, not staff of any clinic."""

from __future__ import annotations

import uuid

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from healthdb.models.base import Base, Timestamped, new_id
from healthdb.phi.declaration import not_phi


class PlatformOperator(Timestamped, Base):
    """An operator account: reads operational figures (pools, latencies, metrics) across
    clinics, and no clinic's rows. Deliberately not a tenant table and without a clinic.

    Created and revoked only from the command line, through the database owner
    (``healthdb operator create|revoke``); the runtime role may only read it. The key
    itself is shown once at creation and stored as its SHA-256 (a 256-bit random key
    needs no slow hash).
    """

    __tablename__ = "platform_operators"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(
        String(64), unique=True, info=not_phi("an operator's handle, not a patient's name")
    )
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(default=True)
