"""Creating a clinic: the one write that starts a tenant.

A clinic's row is written only inside that clinic's own scope (row-level security on
PostgreSQL since migration 0008, the change recorder on every backend), so a new clinic is
inserted in the scope of its new id; the insert is audited as ``clinic.create`` in the new
clinic's own chain.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from healthdb.context import Role
from healthdb.models import Clinic
from healthdb.query.options import QueryOptions
from healthdb.service import DatabaseService

__all__ = ["create_clinic"]


async def create_clinic(
    db: DatabaseService,
    name: str,
    *,
    clinic_id: uuid.UUID | None = None,
    actor: uuid.UUID | None = None,
    purpose: str = "administration",
    rate_limit_per_minute: int | None = None,
) -> uuid.UUID:
    """Insert a clinic named ``name`` (with ``clinic_id``, or a new id); return its id."""
    clinic = Clinic(
        id=clinic_id or uuid.uuid4(),
        name=name,
        active=True,
        rate_limit_per_minute=rate_limit_per_minute,
    )

    async def op(session: AsyncSession) -> None:
        session.add(clinic)
        await session.flush()

    async with db.clinic(clinic.id, actor=actor, role=Role.CLINIC_ADMIN, purpose=purpose):
        await db.execute_write(op, QueryOptions.for_write("clinics.create"))
    return clinic.id
