"""Patient writes without the ORM: the versioned update as a command (:mod:`healthdb.command`).

``db.execute_write(patient_commands.update(pid, expected_version=3, phone=...),
QueryOptions.for_phi())`` changes the same row :meth:`PatientRepository.update` would, under
the same rules (immutable columns, masked values refused, SSN encrypted and its blind
index recomputed, version checked), audited in the write's own transaction, and returns the
patient as a masked :class:`~healthdb.repositories.patient_views.PatientRecord`.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from healthdb.command import Change, RowUpdate
from healthdb.context import as_uuid
from healthdb.models import Patient
from healthdb.repositories.patient_views import BY_ID, PatientRecord
from healthdb.repositories.patients import PatientRepository

__all__ = ["update"]

_UPDATE: RowUpdate[PatientRecord] = RowUpdate(Patient, BY_ID, name="patients.update")


def update(
    patient_id: uuid.UUID | str, *, expected_version: int | None, **changes: Any
) -> Change[PatientRecord]:
    """Change a visible patient's fields; ``expected_version`` None skips the check."""
    key = as_uuid(patient_id, "patient_id")

    async def fallback(session: AsyncSession) -> Patient:  # the same change, through the ORM
        return await PatientRepository(session).update(
            key, expected_version=expected_version, **changes
        )

    return _UPDATE.bind(key, expected_version=expected_version, changes=changes, fallback=fallback)
