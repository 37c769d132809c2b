"""Every touch of PHI is audited in its own transaction, masked for the caller's role, and
stored encrypted where most sensitive — proven on both backends through the facade.

Audit failures are real database refusals: a trigger created by the owner for one test
clinic raises on every INSERT into ``audit_events`` for that clinic only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import QueryOptions
from healthdb.clinics import create_clinic
from healthdb.engine import create_engine
from healthdb.errors import AuditWriteFailed, EncryptionError, InvalidInput
from healthdb.internal import audit_verify
from healthdb.models import AuditEvent, Patient
from healthdb.phi import MaskedValue
from healthdb.phi.keys import keyring_for
from healthdb.service import DatabaseService
from healthdb.settings import Settings
from tests.integration.conftest import MakeClinic, MakePatient

SSN = "123-45-6789"
NOTES = "suspected arrhythmia"
RefuseAudit = Callable[[uuid.UUID], Awaitable[None]]


@pytest.fixture
def owner_url(migrated_url: str, request: pytest.FixtureRequest) -> str:
    if migrated_url.startswith("postgresql"):
        return str(request.getfixturevalue("pg_admin_migrated_url"))
    return migrated_url


async def owner_execute(owner_url: str, sql: str, **params: Any) -> list[Any]:
    settings = Settings(database_url=owner_url)
    engine = create_engine(settings.url, settings, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


@pytest.fixture
async def refuse_audit(owner_url: str) -> AsyncIterator[RefuseAudit]:
    """``await refuse_audit(clinic)``: the database refuses that clinic's audit rows."""
    created: list[str] = []
    postgres = owner_url.startswith("postgresql")

    async def refuse(clinic: uuid.UUID) -> None:
        name = f"refuse_audit_{clinic.hex[:12]}"
        if postgres:
            await owner_execute(
                owner_url,
                "CREATE OR REPLACE FUNCTION hdb_test_refuse_audit() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit refused (test)'; END $$",
            )
            await owner_execute(
                owner_url,
                f"CREATE TRIGGER {name} BEFORE INSERT ON audit_events FOR EACH ROW "
                f"WHEN (NEW.clinic_id = '{clinic}') EXECUTE FUNCTION hdb_test_refuse_audit()",
            )
        else:
            await owner_execute(
                owner_url,
                f"CREATE TRIGGER {name} BEFORE INSERT ON audit_events "
                f"WHEN NEW.clinic_id = '{clinic.hex}' "
                "BEGIN SELECT RAISE(ABORT, 'audit refused (test)'); END",
            )
        created.append(name)

    yield refuse
    for name in created:
        on = " ON audit_events" if postgres else ""
        await owner_execute(owner_url, f"DROP TRIGGER {name}{on}")


async def audit_rows(db: DatabaseService, clinic: uuid.UUID) -> list[AuditEvent]:
    async def op(session: AsyncSession) -> list[AuditEvent]:
        stmt = (
            select(AuditEvent)
            .where(AuditEvent.clinic_id == clinic)
            .order_by(AuditEvent.occurred_at, AuditEvent.seq)
        )
        return list((await session.scalars(stmt)).all())

    async with db.clinic(clinic, role="clinic_admin"):
        return await db.execute_read(op)


def get(pid: uuid.UUID) -> Callable[[AsyncSession], Awaitable[Patient | None]]:
    async def op(session: AsyncSession) -> Patient | None:
        return await session.get(Patient, pid)

    return op


async def patient(make_clinic: MakeClinic, make_patient: MakePatient) -> tuple[uuid.UUID, ...]:
    clinic = await make_clinic()
    return clinic, await make_patient(clinic, ssn=SSN, notes=NOTES, phone="+14155550123")


# -- reads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [None, QueryOptions.for_phi("patients.get")])
async def test_every_read_is_audited_with_who_why_and_which_fields(
    db: DatabaseService,
    make_clinic: MakeClinic,
    make_patient: MakePatient,
    options: QueryOptions | None,
) -> None:
    clinic, pid = await patient(make_clinic, make_patient)
    actor = uuid.uuid4()
    async with db.clinic(
        clinic,
        actor=actor,
        role="doctor",
        purpose="treatment",
        request_id="req-42",
        client_addr="203.0.113.9",
    ):
        found = await db.execute_read(get(pid), options)
    assert found is not None
    assert found.ssn == SSN
    assert found.notes == NOTES
    reads = [e for e in await audit_rows(db, clinic) if e.action.startswith("phi.read")]
    assert len(reads) == 1
    event = reads[0]
    assert event.action == "phi.read"
    assert (event.actor_id, event.actor_role) == (actor, "doctor")
    assert (event.purpose, event.request_id, event.client_addr) == (
        "treatment",
        "req-42",
        "203.0.113.9",
    )
    assert (event.resource_type, event.resource_id) == ("patients", str(pid))
    assert {"ssn", "notes", "given_name", "date_of_birth"} <= set(event.phi_fields)
    assert SSN not in repr(vars(event))
    assert NOTES not in repr(vars(event))


async def test_a_receptionist_gets_masked_values_and_the_access_is_audited_as_masked(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic, pid = await patient(make_clinic, make_patient)
    async with db.clinic(clinic, role="receptionist"):
        found = await db.execute_read(get(pid), QueryOptions.for_phi())
    assert found is not None
    assert found.ssn == "***-**-6789"
    assert isinstance(found.ssn, MaskedValue)
    assert found.notes is None
    assert found.phone == "+14155550123"
    actions = [e.action for e in await audit_rows(db, clinic)]
    assert actions[-1] == "phi.read_masked"


async def test_a_masked_value_is_never_written_back(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic, pid = await patient(make_clinic, make_patient)
    async with db.clinic(clinic, role="nurse"):
        masked = await db.execute_read(get(pid))
    assert masked is not None
    assert masked.ssn == "***-**-6789"

    async def write_back(session: AsyncSession) -> None:
        await session.merge(masked)

    async with db.clinic(clinic, role="doctor"):
        with pytest.raises((InvalidInput, EncryptionError)):
            await db.execute_write(write_back)
        again = await db.execute_read(get(pid))
    assert again is not None
    assert again.ssn == SSN


async def test_a_bare_phi_column_select_is_audited(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic, _pid = await patient(make_clinic, make_patient)

    async def ssns(session: AsyncSession) -> list[str | None]:
        return list((await session.scalars(select(Patient.ssn))).all())

    async with db.clinic(clinic, role="doctor"):
        assert await db.execute_read(ssns) == [SSN]
    last = (await audit_rows(db, clinic))[-1]
    assert (last.action, last.resource_id, last.phi_fields) == ("phi.read", None, ["ssn"])


# -- writes --------------------------------------------------------------------------------


async def test_create_update_and_delete_are_audited_with_the_fields_written(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic, pid = await patient(make_clinic, make_patient)

    async def edit(session: AsyncSession) -> None:
        found = await session.get(Patient, pid)
        assert found is not None
        found.notes = "revised"
        found.phone = None

    async def soft_delete(session: AsyncSession) -> None:
        from healthdb.models.base import utcnow

        found = await session.get(Patient, pid)
        assert found is not None
        found.deleted_at = utcnow()

    async with db.clinic(clinic, role="doctor"):
        await db.execute_write(edit)
        await db.execute_write(soft_delete)
    events = await audit_rows(db, clinic)
    writes = [(e.action, e.phi_fields) for e in events if not e.action.startswith("phi.read")]
    created = writes[0]
    assert created[0] == "phi.create"
    assert {"ssn", "notes", "phone", "mrn"} <= set(created[1])
    assert writes[1:] == [("phi.update", ["notes", "phone"]), ("phi.delete", [])]
    assert [e.resource_id for e in events] == [str(pid)] * len(events)


async def test_emergency_use_is_audited_with_its_reason(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic, pid = await patient(make_clinic, make_patient)
    async with db.clinic(clinic, role="doctor"):
        await db.execute_critical(get(pid), reason="unconscious patient in ER")
    actions = [(e.action, e.reason) for e in await audit_rows(db, clinic)]
    assert ("emergency.access", "unconscious patient in ER") in actions
    assert ("phi.read", "unconscious patient in ER") in actions


# -- no audit row, no access ------------------------------------------------------------


@pytest.mark.parametrize("options", [None, QueryOptions.for_phi("patients.get")])
async def test_a_read_whose_audit_row_cannot_be_written_returns_nothing(
    db: DatabaseService,
    make_clinic: MakeClinic,
    make_patient: MakePatient,
    refuse_audit: RefuseAudit,
    options: QueryOptions | None,
) -> None:
    clinic, pid = await patient(make_clinic, make_patient)
    await refuse_audit(clinic)
    async with db.clinic(clinic, role="doctor"):
        with pytest.raises(AuditWriteFailed):
            await db.execute_read(get(pid), options)


async def test_a_write_whose_audit_row_cannot_be_written_is_rolled_back(
    db: DatabaseService,
    make_clinic: MakeClinic,
    make_patient: MakePatient,
    refuse_audit: RefuseAudit,
    owner_url: str,
) -> None:
    clinic, pid = await patient(make_clinic, make_patient)
    before = await audit_rows(db, clinic)
    await refuse_audit(clinic)

    async def edit(session: AsyncSession) -> None:
        found = await session.get(Patient, pid)
        assert found is not None
        found.notes = "never committed"

    async with db.clinic(clinic, role="doctor"):
        with pytest.raises(AuditWriteFailed):
            await db.execute_write(edit)
    rows = await owner_execute(
        owner_url, "SELECT notes, version FROM patients WHERE id = :id", id=_db_id(owner_url, pid)
    )
    [(token, version)] = [tuple(r) for r in rows]
    assert (db.keyring.decrypt(token, aad="patients.notes"), version) == (NOTES, 1)
    assert len(before) == 1  # the create, and nothing since


# -- encryption at rest --------------------------------------------------------------------


def _db_id(url: str, value: uuid.UUID) -> str:
    return str(value) if url.startswith("postgresql") else value.hex


async def test_the_ssn_is_stored_encrypted_with_its_key_id_and_a_blind_index(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient, owner_url: str
) -> None:
    _clinic, pid = await patient(make_clinic, make_patient)
    rows = await owner_execute(
        owner_url, "SELECT ssn, ssn_index FROM patients WHERE id = :id", id=_db_id(owner_url, pid)
    )
    token, index = rows[0]
    assert token.startswith(f"v1.{db.keyring.active}.")
    assert "6789" not in token
    assert SSN not in token
    assert index == keyring_for(db.settings).blind_index("123 45 6789")


async def test_the_chain_still_verifies_after_audited_work(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic, pid = await patient(make_clinic, make_patient)
    async with db.clinic(clinic, role="receptionist"):
        await db.execute_read(get(pid))

    async def check(session: AsyncSession) -> audit_verify.VerifyResult:
        return await audit_verify.verify(session, clinic)

    async with db.clinic(clinic, role="clinic_admin"):
        result = await db.execute_read(check)
    assert result.ok
    assert result.checked == 2


async def test_bulk_inserts_encrypt_index_and_audit_every_row(
    db: DatabaseService, make_clinic: MakeClinic, owner_url: str
) -> None:
    from tests.integration.conftest import patient_fields

    clinic = await make_clinic()
    # Over COPY_THRESHOLD, so PostgreSQL takes the COPY path, which skips bind processing.
    rows = [patient_fields(id=uuid.uuid4(), ssn=f"123-45-{i:04d}") for i in range(60)]
    async with db.clinic(clinic, role="doctor"):
        result = await db.execute_batch(rows, Patient)
    assert result.ok
    stored = await owner_execute(
        owner_url,
        "SELECT ssn, ssn_index FROM patients WHERE clinic_id = :c",
        c=_db_id(owner_url, clinic),
    )
    assert len(stored) == 60
    keyring = keyring_for(db.settings)
    assert {index for _token, index in stored} == {keyring.blind_index(row["ssn"]) for row in rows}
    assert all(token.startswith("v1.") and "123-45" not in token for token, _ in stored)
    creates = [e for e in await audit_rows(db, clinic) if e.action == "phi.create"]
    assert sorted(e.resource_id or "" for e in creates) == sorted(str(r["id"]) for r in rows)
    assert all("ssn" in e.phi_fields for e in creates)


# -- lanes: one clinic's accesses audit concurrently ------------------------------------------


async def test_concurrent_accesses_group_reads_spread_writes_and_every_lane_verifies(
    make_db: Any, make_clinic: MakeClinic, make_patient: MakePatient, owner_url: str
) -> None:
    """Concurrent reads share group commits (fewer flushes than reads); concurrent writes,
    which keep their audit rows in their own transactions, spread over the lanes."""
    clinic, pid = await patient(make_clinic, make_patient)
    lanes_db: DatabaseService = await make_db(audit_lanes=4, pool_size=5)

    async def create(session: AsyncSession) -> None:
        session.add(
            Patient(
                mrn=uuid.uuid4().hex[:12],
                given_name="Lane",
                family_name="Writer",
                date_of_birth=dt.date(1970, 1, 1),
                sex="other",
            )
        )

    async with lanes_db.clinic(clinic, role="doctor"):
        await asyncio.gather(
            *(lanes_db.execute_read(get(pid), QueryOptions.for_phi()) for _ in range(24)),
            *(lanes_db.execute_write(create, QueryOptions.for_phi()) for _ in range(8)),
        )
    assert lanes_db.audit_writer.rows == 24
    assert lanes_db.audit_writer.flushes < 24
    events = await audit_rows(lanes_db, clinic)
    by_lane: dict[int, list[int]] = {}
    for event in events:
        by_lane.setdefault(event.lane, []).append(event.seq or 0)
    postgres = owner_url.startswith("postgresql")
    assert len(by_lane) > 1 if postgres else set(by_lane) == {0}
    for seqs in by_lane.values():
        assert sorted(seqs) == list(range(1, len(seqs) + 1))
    assert sum(map(len, by_lane.values())) == 33  # the first create, 24 reads, 8 creates

    settings = Settings(database_url=owner_url)
    engine = create_engine(settings.url, settings, pool_size=1, max_overflow=0)
    try:
        async with (
            engine.connect() as conn,
            conn.begin() as transaction,
            AsyncSession(bind=conn) as session,
        ):
            if postgres:  # before any cursor is open on the table in this transaction
                await conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
            assert (await audit_verify.verify(session, clinic)).ok
            if postgres:  # tamper with a row of a lane other than 0, then roll back
                lane = max(by_lane)
                await conn.execute(
                    text(
                        "UPDATE audit_events SET action = 'phi.nothing' "
                        "WHERE clinic_id = :c AND lane = :l AND seq = 1"
                    ),
                    {"c": str(clinic), "l": lane},
                )
                result = await audit_verify.verify(session, clinic)
                assert not result.ok
                assert result.first_bad is not None
                assert (result.first_bad.lane, result.first_bad.seq) == (lane, 1)
            await transaction.rollback()
    finally:
        await engine.dispose()


async def test_a_pages_look_ahead_row_is_not_recorded_as_read(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    from healthdb.repositories import PatientRepository

    clinic = await make_clinic()
    first = await make_patient(clinic, mrn="LOOKAHEAD-1")
    await make_patient(clinic, mrn="LOOKAHEAD-2")

    async def page(session: AsyncSession) -> list[uuid.UUID]:
        result = await PatientRepository(session).list(limit=1, sort="mrn")
        assert result.next_cursor is not None
        return [p.id for p in result.items]

    async with db.clinic(clinic, role="doctor"):
        assert await db.execute_read(page) == [first]
    reads = [e.resource_id for e in await audit_rows(db, clinic) if e.action == "phi.read"]
    assert reads == [str(first)]


async def test_audited_reads_in_concurrent_repeatable_read_transactions_both_succeed(
    pg_migrated_url: str,
) -> None:
    """PostgreSQL only (SQLite serialises writers up front, so no snapshot race exists): a
    REPEATABLE READ transaction reads the chain head from its snapshot; when another
    transaction appended to the same lane after that snapshot, the append collides, and the
    whole unit is re-run with a fresh snapshot instead of failing."""
    from healthdb import IsolationLevel, TransactionOptions
    from tests.integration.conftest import DEFAULTS, assert_pools_idle, patient_fields

    settings = Settings(database_url=pg_migrated_url, **{**DEFAULTS, "audit_lanes": 1})
    async with DatabaseService.connect(settings) as one_lane:
        clinic = uuid.uuid4()
        await create_clinic(one_lane, "rr", clinic_id=clinic)
        new = Patient(**patient_fields())
        async with one_lane.clinic(clinic, role="doctor"):
            await one_lane.execute_write(lambda s: _add(s, new))
        pid = new.id
        first_committed = asyncio.Event()
        second_read = asyncio.Event()
        runs = 0

        async def first(session: AsyncSession) -> Patient | None:
            await second_read.wait()
            return await session.get(Patient, pid)

        async def second(session: AsyncSession) -> Patient | None:
            nonlocal runs
            runs += 1
            found = await session.get(Patient, pid)  # the snapshot is taken here
            second_read.set()
            if runs == 1:
                await first_committed.wait()
            return found

        options = TransactionOptions.isolation_level(IsolationLevel.REPEATABLE_READ)

        async def run_first() -> None:
            await one_lane.execute_transaction(first, options)
            first_committed.set()

        async with one_lane.clinic(clinic, role="doctor"):
            _, got = await asyncio.gather(
                run_first(), one_lane.execute_transaction(second, options)
            )
        assert got is not None
        assert runs == 2
        reads = [e for e in await audit_rows(one_lane, clinic) if e.action == "phi.read"]
        assert len(reads) == 2
        assert_pools_idle(one_lane)


async def _add(session: AsyncSession, obj: object) -> None:
    session.add(obj)
    await session.flush()
