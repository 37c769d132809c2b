"""Audit events. Filling and chaining them belongs to the audit module."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import JSON, BigInteger, Index, SmallInteger, String, text
from sqlalchemy.orm import Mapped, mapped_column

from healthdb.models.base import Base, Tenant, new_id, utcnow
from healthdb.phi.declaration import not_phi


class AuditEvent(Tenant, Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index(None, "clinic_id", "occurred_at"),
        Index(None, "clinic_id", "resource_type", "resource_id"),
        # One position per lane of a clinic's chain (migrations 0003, 0005).
        Index(None, "clinic_id", "lane", "seq", unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    lane: Mapped[int] = mapped_column(SmallInteger, default=0, server_default=text("0"))
    seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    occurred_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    actor_role: Mapped[str | None] = mapped_column(String(32), default=None)
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(64), default=None)
    phi_fields: Mapped[list[str]] = mapped_column(JSON, default=list)
    purpose: Mapped[str | None] = mapped_column(String(64), default=None)
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    request_id: Mapped[str | None] = mapped_column(String(64), default=None)
    client_addr: Mapped[str | None] = mapped_column(String(64), default=None)
    reason: Mapped[str | None] = mapped_column(
        String(500),
        default=None,
        info=not_phi("staff's break-glass justification; redacted from logs, shown to admins"),
    )
    prev_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    row_hash: Mapped[str | None] = mapped_column(String(64), default=None)
