"""A tenant table that enters FROM only through a column in WHERE is still scoped.

Found in review: ``select(func.count()).where(func.lower(Patient.mrn) == x)`` counted every
clinic's rows on SQLite (PostgreSQL's row-level security still held), because the loader
criteria reach only entities the statement selects or joins.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb.models import Patient
from healthdb.service import DatabaseService
from tests.integration.conftest import MakeClinic, MakePatient


@pytest.mark.parametrize(
    "where",
    [
        lambda: func.lower(Patient.mrn) == "implicitfrom1",
        lambda: func.upper(func.lower(Patient.mrn)) == "IMPLICITFROM1",
    ],
)
async def test_count_through_a_function_of_a_tenant_column_sees_one_clinic(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient, where: object
) -> None:
    a, b = await make_clinic(), await make_clinic()
    await make_patient(a, mrn="IMPLICITFROM1")
    await make_patient(b, mrn="IMPLICITFROM1")

    async def count(session: AsyncSession) -> int:
        clause = where()  # type: ignore[operator]
        return int((await session.execute(select(func.count()).where(clause))).scalar_one())

    async with db.clinic(a):
        assert await db.execute_read(count) == 1
    async with db.clinic(b):
        assert await db.execute_read(count) == 1
