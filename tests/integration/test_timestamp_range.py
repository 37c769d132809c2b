"""A timestamp whose UTC value no backend can hold is the caller's error (``InvalidInput``),
not a driver failure: on both backends, through the facade."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import DatabaseService, InvalidInput
from healthdb.models import Appointment
from tests.integration.conftest import MakeClinic

# Valid aware datetimes whose UTC value is in year 10000 and year 0.
LATE = dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
EARLY = dt.datetime(1, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5)))


@pytest.mark.parametrize("stamp", [LATE, EARLY])
async def test_an_out_of_range_instant_in_a_query_is_invalid_input(
    db: DatabaseService, make_clinic: MakeClinic, stamp: dt.datetime
) -> None:
    clinic = await make_clinic()

    async def op(session: AsyncSession) -> list[uuid.UUID]:
        stmt = select(Appointment.id).where(Appointment.start_at < stamp)
        return list((await session.scalars(stmt)).all())

    async with db.clinic(clinic):
        with pytest.raises(InvalidInput, match="years 1-9999"):
            await db.execute_read(op)
