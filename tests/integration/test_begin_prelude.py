"""The transaction-local settings that travel with BEGIN (PostgreSQL): the clinic is set for
the unit's own transaction only, an unused prelude never reaches another unit, and a prelude
that fails leaves the pooled connection clean."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import QueryOptions
from healthdb.engine import begin_with, disarm
from healthdb.internal import audit_verify
from healthdb.internal.audit import LANE_SETTING, lanes
from healthdb.models import AuditEvent, Patient
from tests.integration.conftest import MakeClinic, MakeDb, MakePatient

CLINIC = text("SELECT current_setting('app.clinic_id', true)")
LANE = text(f"SELECT current_setting('{LANE_SETTING}', true)")


# PostgreSQL only (SQLite has no prelude): run there, rather than skip on SQLite.
pytestmark = pytest.mark.parametrize("migrated_url", ["postgres"], indirect=True)


async def _setting(session: AsyncSession, stmt: object = CLINIC) -> str | None:
    value: str | None = (await session.execute(stmt)).scalar()  # type: ignore[call-overload]
    return value


async def test_the_clinic_is_set_for_the_units_transaction_only(
    make_db: MakeDb, make_clinic: MakeClinic
) -> None:
    db = await make_db(pool_size=1, max_overflow=0)
    clinic = await make_clinic()
    async with db.clinic(clinic):
        assert await db.execute_read(_setting) == str(clinic)
        assert await db.execute_write(_setting) == str(clinic)
    # The same (only) pooled connection, no scope: nothing is left over.
    assert await db.execute_read(_setting) in (None, "")


async def test_a_phi_unit_claims_an_audit_lane_with_begin(
    make_db: MakeDb, make_clinic: MakeClinic
) -> None:
    db = await make_db(pool_size=1, max_overflow=0, audit_lanes=4)
    clinic = await make_clinic()
    async with db.clinic(clinic):
        # A PHI write: its audit rows commit in its own transaction, on the claimed lane.
        lane = await db.execute_write(lambda s: _setting(s, LANE), QueryOptions.for_phi())
        assert lane in {"0", "1", "2", "3"}
        assert await db.execute_read(lambda s: _setting(s, LANE)) in (None, "")


async def test_an_unused_prelude_never_reaches_another_unit(
    make_db: MakeDb, make_clinic: MakeClinic
) -> None:
    db = await make_db(pool_size=1, max_overflow=0)
    clinic = await make_clinic()

    async def nothing(_session: AsyncSession) -> None:
        return None

    async with db.clinic(clinic):
        await db.execute_read(nothing)  # armed, never began
    assert await db.execute_read(_setting) in (None, "")


async def test_a_failing_prelude_leaves_the_connection_clean(make_db: MakeDb) -> None:
    db = await make_db(pool_size=1, max_overflow=0)
    maker = db._sessions.write
    async with maker() as session:
        armed = begin_with(await session.connection(), "SELECT 1 / 0;")
        try:
            with pytest.raises(DBAPIError):
                await session.execute(text("SELECT 1"))
        finally:
            disarm(armed)
    async with maker() as session:
        assert (await session.execute(text("SELECT 2"))).scalar() == 2
        driver = (await (await session.connection()).get_raw_connection()).driver_connection
        assert driver is not None
        assert driver.is_in_transaction()
        await session.commit()
        assert not driver.is_in_transaction()


async def test_appends_on_a_remembered_head_are_checked_by_the_database(
    make_db: MakeDb, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    """Two services (two processes' worth of remembered heads) append to one lane in turn,
    and a remembered head is poisoned: every stale hint is refused by the guarded INSERT and
    the append falls back to reading the head, so the chain stays gapless and verifies."""
    one = await make_db(audit_lanes=1)
    two = await make_db(audit_lanes=1)
    clinic = await make_clinic()
    pid = await make_patient(clinic, ssn="123-45-6789")

    async def get(session: AsyncSession) -> Patient | None:
        return await session.get(Patient, pid)

    async with one.clinic(clinic, role="doctor"):
        for service in (one, one, two, one, two, two, one):
            await service.execute_read(get, QueryOptions.for_phi())
            await service.execute_read(get)  # audited by the group-commit writer too
        for key, (seq, _hash) in list(lanes._heads.items()):
            if key[1] == clinic:
                lanes._heads[key] = (seq, "f" * 64)  # right seq, wrong hash
        await one.execute_read(get, QueryOptions.for_phi())
        for key, (seq, row) in list(lanes._heads.items()):
            if key[1] == clinic:
                lanes._heads[key] = (seq - 1, row)  # an older head
        await one.execute_read(get, QueryOptions.for_phi())

    async def rows(session: AsyncSession) -> list[tuple[int, int | None]]:
        stmt = select(AuditEvent.lane, AuditEvent.seq).where(AuditEvent.clinic_id == clinic)
        return [(lane, seq) for lane, seq in (await session.execute(stmt)).all()]

    async def check(session: AsyncSession) -> audit_verify.VerifyResult:
        return await audit_verify.verify(session, clinic)

    async with one.clinic(clinic, role="clinic_admin"):
        found = await one.execute_read(rows)
        result = await one.execute_read(check)
    by_lane: dict[int, list[int]] = {}
    for lane, number in found:
        by_lane.setdefault(lane, []).append(number or 0)
    for seqs in by_lane.values():
        assert sorted(seqs) == list(range(1, len(seqs) + 1))
    assert len(found) == 17  # the create (by the fixture's own service) and 16 reads
    assert len(by_lane[0]) >= 16  # every read on the one lane
    assert result.ok
    assert result.checked == 17
