"""DatabaseService end to end, on SQLite and PostgreSQL (``migrated_url``).

Every test builds its own clinics, so the session-shared databases never leak state between
tests. The ``db`` fixture checks at teardown that every pooled connection came back.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from structlog.testing import capture_logs

from healthdb import keys
from healthdb.context import Role, current_scope
from healthdb.errors import (
    ClinicContextRequired,
    ConflictError,
    DatabaseError,
    InvalidInput,
    PhiNotCacheable,
    PoolTimeout,
    QueryTimeout,
    RateLimited,
    ServiceClosed,
    TransientError,
)
from healthdb.models import Patient
from healthdb.query.batch import BatchResult
from healthdb.query.options import IsolationLevel, QueryOptions, TransactionOptions
from healthdb.service import DatabaseService
from healthdb.settings import Settings
from tests.integration.conftest import (
    MakeClinic,
    MakeDb,
    MakePatient,
    MakeUser,
    assert_pools_idle,
    patient_fields,
)


class FakeDriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"fabricated {sqlstate}")
        self.sqlstate = sqlstate


def sample(db: DatabaseService, name: str, **labels: str) -> float:
    return db.metrics.registry.get_sample_value(name, labels) or 0.0


def get_patient(pid: uuid.UUID) -> Any:
    async def op(session: AsyncSession) -> Patient | None:
        return await session.get(Patient, pid)

    return op


def set_notes(pid: uuid.UUID, notes: str) -> Any:
    async def op(session: AsyncSession) -> None:
        patient = await session.get(Patient, pid)
        assert patient is not None
        patient.notes = notes

    return op


async def count_patients(session: AsyncSession, **where: Any) -> int:
    stmt = select(func.count()).select_from(Patient)
    for column, value in where.items():
        stmt = stmt.where(getattr(Patient, column) == value)
    return int((await session.execute(stmt)).scalar_one())


# -- scoping and tenancy ----------------------------------------------------------------


async def test_read_write_round_trip_in_a_clinic_scope(
    db: DatabaseService, make_clinic: MakeClinic
) -> None:
    clinic = await make_clinic()
    async with db.clinic(clinic, role="doctor") as scope:
        assert current_scope() is scope

        async def add(session: AsyncSession) -> uuid.UUID:
            patient = Patient(**patient_fields(family_name="Xenakis"))
            session.add(patient)
            await session.flush()
            return patient.id

        pid = await db.execute_write(add)
        patient = await db.execute_read(get_patient(pid))
        assert patient is not None
        assert patient.family_name == "Xenakis"
        assert patient.clinic_id == clinic  # stamped from the scope
        assert patient.version == 1
        assert await db.execute_read(lambda s: count_patients(s)) == 1
    assert current_scope() is None


async def test_tenant_queries_outside_a_scope_are_refused(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    pid = await make_patient(clinic)
    with pytest.raises(ClinicContextRequired):
        await db.execute_read(get_patient(pid))
    with pytest.raises(ClinicContextRequired):
        await db.execute_read(lambda s: count_patients(s))

    async def add(session: AsyncSession) -> None:
        session.add(Patient(clinic_id=clinic, **patient_fields(mrn="NO-SCOPE")))

    with pytest.raises(ClinicContextRequired):
        await db.execute_write(add)
    with pytest.raises(ClinicContextRequired):
        await db.execute_transaction(set_notes(pid, "x"))
    async with db.clinic(clinic):
        assert await db.execute_read(lambda s: count_patients(s, mrn="NO-SCOPE")) == 0
        patient = await db.execute_read(get_patient(pid))
        assert patient is not None
        assert patient.notes is None


async def test_rows_of_one_clinic_are_invisible_from_another(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    a, b = await make_clinic("A"), await make_clinic("B")
    pid = await make_patient(a, family_name="OnlyInA")
    async with db.clinic(b, role="clinic_admin"):
        assert await db.execute_read(get_patient(pid)) is None
        rows = await db.execute_read(
            lambda s: s.scalars(select(Patient).where(Patient.family_name == "OnlyInA"))
        )
        assert list(rows) == []
        assert await db.execute_read(lambda s: count_patients(s)) == 0

        async def bulk_update(session: AsyncSession) -> int:
            stmt = update(Patient).where(Patient.id == pid).values(notes="from B")
            result = await session.execute(stmt)
            return int(result.rowcount)  # type: ignore[attr-defined]

        assert await db.execute_write(bulk_update) == 0
    async with db.clinic(a):
        patient = await db.execute_read(get_patient(pid))
        assert patient is not None
        assert patient.notes is None


async def test_writing_a_row_for_another_clinic_is_refused(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    a, b = await make_clinic("A"), await make_clinic("B")

    async def add_for_b(session: AsyncSession) -> None:
        session.add(Patient(clinic_id=b, **patient_fields(mrn="CROSS")))

    async with db.clinic(a, role="clinic_admin"):
        with pytest.raises(ClinicContextRequired):
            await db.execute_write(add_for_b)
    pid = await make_patient(a)

    async def move_to_b(session: AsyncSession) -> None:
        patient = await session.get(Patient, pid)
        assert patient is not None
        patient.clinic_id = b

    async with db.clinic(a, role="clinic_admin"):
        with pytest.raises(ClinicContextRequired):
            await db.execute_write(move_to_b)
        assert (await db.execute_read(get_patient(pid))) is not None
    async with db.clinic(b):
        assert await db.execute_read(lambda s: count_patients(s)) == 0


async def test_execute_with_clinic_context_sets_the_scope(
    db: DatabaseService, make_clinic: MakeClinic, make_clinician: MakeUser
) -> None:
    clinic = await make_clinic()
    actor = await make_clinician(clinic)
    seen: list[Any] = []

    async def op(session: AsyncSession) -> uuid.UUID:
        seen.append(current_scope())
        patient = Patient(**patient_fields())
        session.add(patient)
        await session.flush()
        return patient.id

    pid = await db.execute_with_clinic_context(clinic, op, actor=actor, role="nurse")
    assert current_scope() is None
    (scope,) = seen
    assert scope.clinic_id == clinic
    assert scope.actor == actor
    assert scope.role is Role.NURSE
    async with db.clinic(clinic):
        patient = await db.execute_read(get_patient(pid))
        assert patient is not None
        assert patient.clinic_id == clinic
    with pytest.raises(InvalidInput):
        await db.execute_with_clinic_context("not-a-uuid", op)


async def test_execute_with_clinic_context_charges_the_clinics_budget(
    make_db: MakeDb, make_clinic: MakeClinic
) -> None:
    """The plan's executeWithClinicContext spends the clinic's request budget itself: a
    caller cannot forget it. Over budget, the operation does not run."""
    db = await make_db(rate_limit_per_minute=1, rate_limit_burst=1)
    clinic, other = await make_clinic(), await make_clinic()
    ran: list[uuid.UUID] = []

    async def op(session: AsyncSession) -> None:
        scope = current_scope()
        assert scope is not None
        ran.append(scope.clinic_id)

    await db.execute_with_clinic_context(clinic, op)
    with pytest.raises(RateLimited) as refused:
        await db.execute_with_clinic_context(clinic, op)
    assert refused.value.retry_after > 0
    await db.execute_with_clinic_context(other, op)  # budgets are per clinic
    assert ran == [clinic, other]


# -- cached reads ---------------------------------------------------------------------
# PHI is never cached (every PHI read is audited), so these cache a patient's version: a
# bare non-PHI column that every committed write bumps.


async def patient_version(session: AsyncSession, pid: uuid.UUID) -> int | None:
    stmt = select(Patient.version).where(Patient.id == pid)
    version: int | None = (await session.execute(stmt)).scalar_one_or_none()
    return version


async def test_a_cached_read_that_loads_phi_is_refused_and_not_cached(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    pid = await make_patient(clinic, notes="v1")
    options = QueryOptions.for_read("patient.notes").cached(keys.for_patient(clinic, pid))
    async with db.clinic(clinic, role="doctor"):
        for _ in range(2):
            with pytest.raises(PhiNotCacheable):
                await db.execute_read(get_patient(pid), options)
        assert len(db.cache.store) == 0


async def test_cached_reads_hit_and_committed_writes_invalidate(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    pid = await make_patient(clinic, notes="v1")
    options = QueryOptions.for_read("patient.notes").cached(keys.for_patient(clinic, pid))
    loads = 0

    async def read_notes(session: AsyncSession) -> int | None:
        nonlocal loads
        loads += 1
        return await patient_version(session, pid)

    async with db.clinic(clinic, role="doctor"):
        assert await db.execute_read(read_notes, options) == 1
        hits = db.cache.store.hits
        assert await db.execute_read(read_notes, options) == 1
        assert loads == 1
        assert db.cache.store.hits == hits + 1
        assert sample(db, "healthdb_cache_requests_total", result="hit") == 1
        assert sample(db, "healthdb_cache_requests_total", result="miss") == 1

        await db.execute_write(set_notes(pid, "v2"))
        assert await db.execute_read(read_notes, options) == 2
        assert loads == 2

        async def failing_write(session: AsyncSession) -> None:
            await set_notes(pid, "rolled back")(session)
            await session.flush()
            raise RuntimeError("the op failed after flushing")

        with pytest.raises(RuntimeError):
            await db.execute_write(failing_write)
        assert await db.execute_read(read_notes, options) == 2
        assert loads == 2  # still a hit: a rolled-back write evicts nothing
        patient = await db.execute_read(get_patient(pid))  # uncached: the database agrees
        assert patient is not None
        assert patient.notes == "v2"


async def test_a_read_racing_a_write_does_not_cache_the_stale_value(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    pid = await make_patient(clinic, notes="old")
    options = QueryOptions.for_read("patient.race").cached(keys.for_patient(clinic, pid))
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_read(session: AsyncSession) -> int | None:
        version = await patient_version(session, pid)
        started.set()
        await release.wait()
        return version

    async def read_notes(session: AsyncSession) -> int | None:
        return await patient_version(session, pid)

    async with db.clinic(clinic, role="doctor"):
        reader = asyncio.create_task(db.execute_read(slow_read, options))
        await asyncio.wait_for(started.wait(), 5)
        await db.execute_write(set_notes(pid, "new"))
        release.set()
        assert await reader == 1  # it read before the commit: fine to return
        assert await db.execute_read(read_notes, options) == 2
        assert await db.execute_read(read_notes, options) == 2


async def test_cache_is_partitioned_by_clinic_and_role(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    a, b = await make_clinic("A"), await make_clinic("B")
    pid = await make_patient(a, notes="secret")
    options = QueryOptions.for_read("patient.part").cached(keys.for_patient(a, pid))
    loads: list[tuple[uuid.UUID, str]] = []

    async def read_notes(session: AsyncSession) -> int | None:
        scope = current_scope()
        assert scope is not None
        loads.append((scope.clinic_id, scope.role.value))
        return await patient_version(session, pid)

    async with db.clinic(a, role="doctor"):
        assert await db.execute_read(read_notes, options) == 1
    async with db.clinic(a, role="receptionist"):
        assert await db.execute_read(read_notes, options) == 1
    async with db.clinic(b, role="doctor"):
        assert await db.execute_read(read_notes, options) is None  # not A's cached value
    async with db.clinic(a, role="doctor"):
        assert await db.execute_read(read_notes, options) == 1  # a hit
    assert loads == [(a, "doctor"), (a, "receptionist"), (b, "doctor")]


async def test_a_write_in_another_clinic_does_not_invalidate(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    a, b = await make_clinic("A"), await make_clinic("B")
    pa, pb = await make_patient(a, notes="a1"), await make_patient(b, notes="b1")
    options = QueryOptions.for_read("patient.other").cached(keys.for_patient(a, pa))
    loads = 0

    async def read_notes(session: AsyncSession) -> int | None:
        nonlocal loads
        loads += 1
        return await patient_version(session, pa)

    async with db.clinic(a):
        await db.execute_read(read_notes, options)
    async with db.clinic(b):
        await db.execute_write(set_notes(pb, "b2"))
    async with db.clinic(a):
        assert await db.execute_read(read_notes, options) == 1
    assert loads == 1


# -- transactions -------------------------------------------------------------------------


async def test_read_only_transaction(
    db: DatabaseService, make_clinic: MakeClinic, backend: str
) -> None:
    clinic = await make_clinic()

    async def write(session: AsyncSession) -> None:
        session.add(Patient(**patient_fields(mrn="RO-WRITE")))
        await session.flush()

    async with db.clinic(clinic):
        assert await db.execute_transaction(count_patients, TransactionOptions.read_only()) == 0
        if backend != "postgresql":
            return  # SQLite has no read-only transactions: not enforced there
        flag = await db.execute_transaction(
            lambda s: s.scalar(text("SHOW transaction_read_only")), TransactionOptions.read_only()
        )
        assert flag == "on"
        with pytest.raises(DatabaseError):
            await db.execute_transaction(write, TransactionOptions.read_only())
        with pytest.raises(DatabaseError):  # execute_read is read-only too
            await db.execute_read(write)
        assert await db.execute_read(lambda s: count_patients(s, mrn="RO-WRITE")) == 0
        # The pooled connection is not left read-only.
        await db.execute_write(write)
        assert await db.execute_read(lambda s: count_patients(s, mrn="RO-WRITE")) == 1


async def test_isolation_level_serializable(
    db: DatabaseService, make_clinic: MakeClinic, backend: str
) -> None:
    clinic = await make_clinic()
    options = TransactionOptions.isolation_level(IsolationLevel.SERIALIZABLE)

    async def op(session: AsyncSession) -> Any:
        session.add(Patient(**patient_fields(mrn="SER")))
        await session.flush()
        if backend == "postgresql":
            return await session.scalar(text("SHOW transaction_isolation"))
        return await count_patients(session, mrn="SER")

    async with db.clinic(clinic):
        expected = "serializable" if backend == "postgresql" else 1
        assert await db.execute_transaction(op, options) == expected
        if backend == "postgresql":  # the level does not stick to the pooled connection
            level = await db.execute_transaction(
                lambda s: s.scalar(text("SHOW transaction_isolation"))
            )
            assert level == "read committed"
        assert await db.execute_read(lambda s: count_patients(s, mrn="SER")) == 1


async def test_optimistic_concurrent_updates_both_succeed(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient, backend: str
) -> None:
    clinic = await make_clinic()
    pid = await make_patient(clinic, notes="")
    attempts: collections.Counter[str] = collections.Counter()
    # On PostgreSQL both load version 1 before either writes: a real conflict. SQLite
    # serialises writers at BEGIN IMMEDIATE, so there the two simply run one after the other.
    barrier = asyncio.Barrier(2)

    def append(tag: str) -> Any:
        async def op(session: AsyncSession) -> None:
            attempts[tag] += 1
            patient = await session.get(Patient, pid)
            assert patient is not None
            if backend == "postgresql" and attempts[tag] == 1:
                await asyncio.wait_for(barrier.wait(), 5)
            patient.notes = (patient.notes or "") + tag

        return op

    async with db.clinic(clinic, role="doctor"):
        await asyncio.gather(
            db.execute_transaction(append("a"), TransactionOptions.optimistic()),
            db.execute_transaction(append("b"), TransactionOptions.optimistic()),
        )
        patient = await db.execute_read(get_patient(pid))
    assert patient is not None
    assert patient.version == 3
    assert sorted(patient.notes or "") == ["a", "b"]
    if backend == "postgresql":
        assert sum(attempts.values()) == 3
        assert sample(db, "healthdb_retries_total", reason="optimistic") == 1


# SQLite serialises writers at BEGIN, so two transactions cannot interleave there.
@pytest.mark.parametrize("migrated_url", ["postgres"], indirect=True)
async def test_optimistic_loser_gets_conflict_without_retries(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    pid = await make_patient(clinic)
    barrier = asyncio.Barrier(2)

    def write(tag: str) -> Any:
        async def op(session: AsyncSession) -> None:
            patient = await session.get(Patient, pid)
            assert patient is not None
            await asyncio.wait_for(barrier.wait(), 5)
            patient.notes = tag

        return op

    options = TransactionOptions.optimistic(max_retries=0)
    async with db.clinic(clinic):
        outcomes = await asyncio.gather(
            db.execute_transaction(write("a"), options),
            db.execute_transaction(write("b"), options),
            return_exceptions=True,
        )
        patient = await db.execute_read(get_patient(pid))
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1
    assert isinstance(errors[0], ConflictError)
    assert patient is not None
    assert patient.version == 2


async def test_optimistic_conflict_is_retried_then_reported(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    """Deterministic on both backends: the op bumps the version behind the ORM's back."""
    clinic = await make_clinic()
    pid = await make_patient(clinic)
    calls = 0

    def interfering(times: int) -> Any:
        async def op(session: AsyncSession) -> None:
            nonlocal calls
            calls += 1
            patient = await session.get(Patient, pid)
            assert patient is not None
            if calls <= times:
                # An ORM bulk UPDATE that skips the identity map: behind the ORM's back, yet
                # scoped by the wall (a Core ``table.update()`` is refused as UnsafeStatement).
                bump = (
                    update(Patient)
                    .where(Patient.id == pid)
                    .values(version=Patient.version + 1)
                    .execution_options(synchronize_session=False)
                )
                await session.execute(bump)
            patient.notes = f"call {calls}"

        return op

    async with db.clinic(clinic, role="doctor"):
        with pytest.raises(ConflictError):
            await db.execute_transaction(
                interfering(99), TransactionOptions.optimistic(max_retries=0)
            )
        assert calls == 1
        calls = 0
        with capture_logs() as logs, pytest.raises(ConflictError):
            await db.execute_transaction(
                interfering(99), TransactionOptions.optimistic(max_retries=2).named("bump")
            )
        assert calls == 3
        # Every re-run is logged: operation, attempt, error class; never a value.
        retries = [e for e in logs if e["event"] == "retry"]
        assert [(e["operation"], e["attempt"], e["kind"]) for e in retries] == [
            ("bump", 2, "optimistic"),
            ("bump", 3, "optimistic"),
        ]
        assert {e["error_type"] for e in retries} == {"StaleDataError"}
        calls = 0
        await db.execute_transaction(interfering(1), TransactionOptions.optimistic())
        assert calls == 2
        patient = await db.execute_read(get_patient(pid))
    assert patient is not None
    assert patient.notes == "call 2"
    assert patient.version == 2  # every interfering bump was rolled back with its attempt


async def test_pessimistic_read_modify_write_loses_no_update(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    pid = await make_patient(clinic, notes="")
    writers = 20

    async def append(session: AsyncSession) -> None:
        patient = await session.get(Patient, pid)
        assert patient is not None
        current = patient.notes or ""
        await asyncio.sleep(0)  # give the others every chance to interleave
        patient.notes = current + "x"

    async with db.clinic(clinic, role="doctor"):
        await asyncio.gather(
            *(
                db.execute_transaction(append, TransactionOptions.pessimistic())
                for _ in range(writers)
            )
        )
        patient = await db.execute_read(get_patient(pid))
    assert patient is not None
    assert patient.notes == "x" * writers
    assert patient.version == 1 + writers


async def test_transient_errors_are_retried(db: DatabaseService, make_clinic: MakeClinic) -> None:
    clinic = await make_clinic()
    calls = 0

    async def flaky(session: AsyncSession) -> str:
        nonlocal calls
        calls += 1
        session.add(Patient(**patient_fields(mrn="FLAKY")))
        await session.flush()
        if calls <= 2:
            raise sa_exc.OperationalError("COMMIT", None, FakeDriverError("40001"))
        return "done"

    async with db.clinic(clinic):
        assert await db.execute_transaction(flaky) == "done"
        assert calls == 3
        assert sample(db, "healthdb_retries_total", reason="transient") == 2
        # The failed attempts were rolled back: exactly one row.
        assert await db.execute_read(lambda s: count_patients(s, mrn="FLAKY")) == 1


async def test_non_transient_errors_are_raised_at_once(
    db: DatabaseService, make_clinic: MakeClinic
) -> None:
    clinic = await make_clinic()
    calls = 0

    def failing(exc: BaseException) -> Any:
        async def op(session: AsyncSession) -> None:
            nonlocal calls
            calls += 1
            raise exc

        return op

    async with db.clinic(clinic):
        syntax = sa_exc.ProgrammingError("SELECT", None, FakeDriverError("42601"))
        with pytest.raises(DatabaseError):
            await db.execute_transaction(failing(syntax))
        assert calls == 1
        calls = 0
        unique = sa_exc.IntegrityError("INSERT", None, FakeDriverError("23505"))
        with pytest.raises(ConflictError):
            await db.execute_write(failing(unique))
        assert calls == 1
        calls = 0
        with pytest.raises(KeyError):
            await db.execute_write(failing(KeyError("app bug")))
        assert calls == 1
    assert sample(db, "healthdb_retries_total", reason="transient") == 0


async def test_transient_errors_give_up_after_the_configured_attempts(
    make_db: MakeDb,
) -> None:
    db = await make_db(retry_attempts=3)
    calls = 0

    async def always(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        raise sa_exc.OperationalError("SELECT", None, FakeDriverError("40P01"))

    with pytest.raises(TransientError):
        await db.execute_transaction(always)
    assert calls == 3


async def test_operation_timeout_is_typed(db: DatabaseService) -> None:
    async def slow(session: AsyncSession) -> None:
        await session.execute(select(1))
        await asyncio.sleep(5)

    started = time.perf_counter()
    with pytest.raises(QueryTimeout):
        await db.execute_read(slow, QueryOptions.for_read().with_timeout(0.1))
    with pytest.raises(QueryTimeout):
        await db.execute_transaction(slow, TransactionOptions().with_timeout(0.1))
    assert time.perf_counter() - started < 3


@pytest.mark.parametrize("migrated_url", ["postgres"], indirect=True)
async def test_statement_timeout_on_postgres(make_db: MakeDb) -> None:
    db = await make_db(statement_timeout_ms=100)
    started = time.perf_counter()
    with pytest.raises(QueryTimeout):
        await db.execute_read(lambda s: s.execute(text("SELECT pg_sleep(1)")))
    assert time.perf_counter() - started < 0.9
    assert await db.execute_read(lambda s: s.scalar(text("SELECT 1"))) == 1


async def test_a_cancelled_write_returns_its_connection(
    db: DatabaseService, make_clinic: MakeClinic
) -> None:
    clinic = await make_clinic()
    flushed = asyncio.Event()

    async def stuck(session: AsyncSession) -> None:
        session.add(Patient(**patient_fields(mrn="CANCELLED")))
        await session.flush()
        flushed.set()
        await asyncio.Event().wait()

    async with db.clinic(clinic):
        task = asyncio.create_task(db.execute_write(stuck))
        await asyncio.wait_for(flushed.wait(), 5)
        assert db.engines.primary.pool.checkedout() == 1  # type: ignore[attr-defined]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_pools_idle(db)
        assert await db.execute_read(lambda s: count_patients(s, mrn="CANCELLED")) == 0


# -- batches -------------------------------------------------------------------------------


async def test_batch_reports_every_failure_by_index(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    taken = "MRN-TAKEN"
    await make_patient(clinic, mrn=taken)
    items = [patient_fields(mrn=f"B-{i}") for i in range(20)]
    items[3]["mrn"] = items[7]["mrn"] = taken
    items[11]["given_name"] = None  # NOT NULL in the database
    calls: collections.Counter[int] = collections.Counter()

    async def add(session: AsyncSession, item: dict[str, Any]) -> str:
        calls[next(i for i, x in enumerate(items) if x is item)] += 1
        if item["mrn"] == "B-15":
            raise InvalidInput("refused by the op")
        session.add(Patient(**item))
        await session.flush()
        return str(item["mrn"])

    async with db.clinic(clinic):
        result = await db.execute_batch(items, add, concurrency=5)
        total = await db.execute_read(lambda s: count_patients(s))
    assert [(f.index, f.code) for f in result.failures] == [
        (3, "conflict"),
        (7, "conflict"),
        (11, "integrity_violation"),
        (15, "invalid_input"),
    ]
    assert result.total == 20
    assert result.succeeded == 16
    assert not result.ok
    assert result.succeeded + len(result.failures) == result.total
    assert result.results[0] == "B-0"
    assert result.results[3] is None
    assert total == 1 + 16
    # One item per transaction: a failed item is not run a second time.
    assert all(n == 1 for n in calls.values()), calls
    assert set(calls) == set(range(20))


async def test_batch_chunks_are_rerun_item_by_item(
    db: DatabaseService, make_clinic: MakeClinic
) -> None:
    clinic = await make_clinic()
    items = list(range(10))
    progress: list[int] = []

    async def add(session: AsyncSession, i: int) -> int:
        if i == 6:
            raise InvalidInput("bad item")
        session.add(Patient(**patient_fields(mrn=f"C-{i}")))
        await session.flush()
        return i * 10

    async with db.clinic(clinic):
        result = await db.execute_batch(
            items, add, concurrency=2, chunk_size=4, on_progress=progress.append
        )
        total = await db.execute_read(lambda s: count_patients(s))
    assert [(f.index, f.code) for f in result.failures] == [(6, "invalid_input")]
    assert result.results == [0, 10, 20, 30, 40, 50, None, 70, 80, 90]
    assert total == 9  # the chunk 4..7 was rolled back, then 4, 5, 7 re-run alone
    assert sum(progress) == 10


async def test_bulk_insert_reports_exactly_the_bad_rows(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    await make_patient(clinic, mrn="BULK-TAKEN")
    rows = [
        {
            "mrn": f"BULK-{i}",
            "given_name": "Quinn",
            "family_name": f"Family{i % 17}",
            "date_of_birth": dt.date(1950, 1, 1) + dt.timedelta(days=i),
            "sex": "female",
            "phone": None,
        }
        for i in range(3000)
    ]
    rows[1234]["mrn"] = "BULK-TAKEN"
    rows[2500]["given_name"] = "G" * 201  # String(200)
    progress: list[int] = []

    async with db.clinic(clinic):
        result: BatchResult[Any] = await db.execute_batch(
            rows, Patient, chunk_size=500, on_progress=progress.append
        )
        total = await db.execute_read(lambda s: count_patients(s))
        one = await db.execute_read(
            lambda s: s.scalar(select(Patient).where(Patient.mrn == "BULK-42"))
        )
    assert [(f.index, f.code) for f in result.failures] == [
        (1234, "conflict"),
        (2500, "invalid_input"),
    ]
    assert result.total == 3000
    assert result.succeeded == 2998
    assert total == 2998 + 1
    assert one is not None
    assert one.clinic_id == clinic
    assert one.version == 1
    assert one.date_of_birth == dt.date(1950, 1, 1) + dt.timedelta(days=42)
    assert sum(progress) == 3000


async def test_bulk_rows_for_another_clinic_fail(
    db: DatabaseService, make_clinic: MakeClinic
) -> None:
    a, b = await make_clinic("A"), await make_clinic("B")
    rows = [patient_fields(mrn=f"X-{i}") for i in range(5)]
    rows[2]["clinic_id"] = b
    rows[3]["clinic_id"] = a  # explicit own clinic is fine
    async with db.clinic(a):
        result: BatchResult[Any] = await db.execute_batch(rows, Patient)
        assert await db.execute_read(lambda s: count_patients(s)) == 4
    assert [(f.index, f.code) for f in result.failures] == [(2, "invalid_input")]
    async with db.clinic(b):
        assert await db.execute_read(lambda s: count_patients(s)) == 0


async def test_bulk_insert_into_a_tenant_table_needs_a_scope(db: DatabaseService) -> None:
    with pytest.raises(ClinicContextRequired):
        await db.execute_batch([patient_fields()], Patient)


async def test_batch_refuses_invalid_input(make_db: MakeDb, make_clinic: MakeClinic) -> None:
    db = await make_db(batch_max_items=10)
    clinic = await make_clinic()

    async def op(session: AsyncSession, item: Any) -> None:
        raise AssertionError("must not run")

    async with db.clinic(clinic):
        for items in ("abcdef", b"abc", {"a": 1}, {1, 2}, (i for i in range(3)), 5):
            with pytest.raises(InvalidInput):
                await db.execute_batch(items, op)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            await db.execute_batch(list(range(11)), op)
        with pytest.raises(InvalidInput):
            await db.execute_batch([patient_fields() for _ in range(11)], Patient)
        for concurrency in (0, -1, 501, 2.5):
            with pytest.raises(InvalidInput):
                await db.execute_batch([1], op, concurrency=concurrency)  # type: ignore[arg-type]
        for chunk in (0, -5, 100_001):
            with pytest.raises(InvalidInput):
                await db.execute_batch([1], op, chunk_size=chunk)
        with pytest.raises(InvalidInput):
            await db.execute_batch([1], "not callable")  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            await db.execute_batch([1], int)  # type: ignore[arg-type]
        empty = await db.execute_batch([], op)
        assert empty.total == 0
        assert empty.ok
        result = await db.execute_batch(list(range(10)), lambda s, i: asyncio.sleep(0, i))
        assert result.results == list(range(10))


# -- the break-glass lane --------------------------------------------------------------


async def test_critical_needs_a_reason_and_a_scope(
    db: DatabaseService, make_clinic: MakeClinic
) -> None:
    clinic = await make_clinic()
    calls = 0

    async def op(session: AsyncSession) -> int:
        nonlocal calls
        calls += 1
        return 1

    with pytest.raises(ClinicContextRequired):
        await db.execute_critical(op, reason="cardiac arrest")
    async with db.clinic(clinic, role="doctor"):
        for reason in ("", "   ", "x" * 501):
            with pytest.raises(InvalidInput):
                await db.execute_critical(op, reason=reason)
        assert calls == 0
        before = sample(db, "healthdb_critical_operations_total")
        assert await db.execute_critical(op, reason="cardiac arrest, bed 4") == 1
        assert sample(db, "healthdb_critical_operations_total") == before + 1
        with pytest.raises(InvalidInput):
            await db.execute_write(op, QueryOptions.for_emergency())
    assert calls == 1


async def test_critical_lane_works_when_the_primary_pool_is_exhausted(
    make_db: MakeDb, make_clinic: MakeClinic, make_patient: MakePatient
) -> None:
    clinic = await make_clinic()
    pid = await make_patient(clinic, notes="allergy: penicillin")
    db = await make_db(pool_size=2, max_overflow=0, pool_timeout=0.5, critical_pool_size=1)

    async with db.clinic(clinic, role="doctor"):
        async with db.engines.primary.connect(), db.engines.primary.connect():
            started = time.perf_counter()
            with pytest.raises(PoolTimeout):
                await db.execute_read(get_patient(pid))
            assert time.perf_counter() - started < 3
            patient = await db.execute_critical(get_patient(pid), reason="unconscious patient")
            assert patient is not None
            assert patient.notes == "allergy: penicillin"
            health = await db.health()
            assert health.pools["primary"].checked_out == 2
        patient = await db.execute_read(get_patient(pid))  # released: the pool works again
        assert patient is not None


# -- lifecycle, health, metrics -----------------------------------------------------------


async def test_a_closed_service_refuses_everything(migrated_url: str) -> None:
    service = await DatabaseService.connect(Settings(database_url=migrated_url))
    clinic = uuid.uuid4()
    await service.close()
    assert service.closed
    await service.close()  # idempotent

    async def op(session: AsyncSession) -> None:
        raise AssertionError("must not run")

    async with service.clinic(clinic):
        with pytest.raises(ServiceClosed):
            await service.execute_read(op)
        with pytest.raises(ServiceClosed):
            await service.execute_write(op)
        with pytest.raises(ServiceClosed):
            await service.execute_transaction(op)
        with pytest.raises(ServiceClosed):
            await service.execute_critical(op, reason="emergency")
        with pytest.raises(ServiceClosed):
            await service.execute_batch([1], lambda s, i: op(s))
        with pytest.raises(ServiceClosed):
            await service.execute_batch([patient_fields()], Patient)
    with pytest.raises(ServiceClosed):
        await service.execute_with_clinic_context(clinic, op)
    with pytest.raises(ServiceClosed):
        await service.ping()
    report = await service.health()
    assert not report.ok
    assert report.error == "service_closed"
    # Nothing reopened a connection after close.
    assert service.engines.primary.pool.checkedin() == 0  # type: ignore[attr-defined]


async def test_connect_as_a_context_manager_closes(migrated_url: str) -> None:
    async with DatabaseService.connect(Settings(database_url=migrated_url)) as service:
        assert await service.execute_read(lambda s: s.scalar(select(1))) == 1
    assert service.closed
    with pytest.raises(ServiceClosed):
        await service.execute_read(lambda s: s.scalar(select(1)))


async def test_close_waits_for_in_flight_calls(make_db: MakeDb) -> None:
    db = await make_db()
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(session: AsyncSession) -> int:
        await session.execute(select(1))
        started.set()
        await release.wait()
        return 7

    task = asyncio.create_task(db.execute_read(slow))
    await asyncio.wait_for(started.wait(), 5)
    closing = asyncio.create_task(db.close(drain_seconds=5))
    await asyncio.sleep(0.05)
    assert db.closed
    assert not closing.done()
    with pytest.raises(ServiceClosed):
        await db.execute_read(slow)
    release.set()
    assert await task == 7
    await closing


async def test_health_and_metrics_summary(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient, backend: str
) -> None:
    report = await db.health()
    assert report.ok
    assert report.error is None
    assert report.dialect == backend
    assert report.latency_ms is not None
    assert 0 < report.latency_ms < 5000
    assert set(report.pools) == {"primary", "critical"}
    assert report.pools["primary"].size == 5
    assert report.pools["critical"].size == 1
    assert report.pools["primary"].checked_out == 0

    clinic = await make_clinic()
    pid = await make_patient(clinic)
    options = QueryOptions.for_read("patient.get").cached(keys.for_patient(clinic, pid))
    async with db.clinic(clinic):
        for _ in range(4):
            await db.execute_read(lambda session: patient_version(session, pid), options)
        with pytest.raises(RuntimeError):
            await db.execute_write(_raise_runtime_error, QueryOptions.for_write("boom"))
    summary = db.metrics_summary()
    assert summary["pools"]["primary"].checked_out == 0
    latency = summary["latency"]["read:patient.get"]
    assert latency.count == 4
    assert 0 <= latency.p50_ms <= latency.p95_ms <= latency.p99_ms
    assert summary["latency"]["write:boom"].count == 1
    assert summary["cache"]["entries"] >= 1
    assert summary["cache"]["hit_ratio"] == pytest.approx(3 / 4)
    outcomes = {
        (s.labels["operation"], s.labels["outcome"], s.labels["strategy"])
        for metric in db.metrics.registry.collect()
        if metric.name == "healthdb_operation_seconds"
        for s in metric.samples
        if s.name.endswith("_count")
    }
    assert ("patient.get", "ok", "cache_hit") in outcomes
    assert ("patient.get", "ok", "cached") in outcomes
    assert ("boom", "error", "standard") in outcomes


async def _raise_runtime_error(session: AsyncSession) -> None:
    raise RuntimeError("op failed")


async def test_slow_statement_log_never_holds_values(
    make_db: MakeDb, make_clinic: MakeClinic, make_patient: MakePatient, backend: str
) -> None:
    canary = "CANARY-XYZ"
    clinic = await make_clinic(name=canary)
    await make_patient(clinic, family_name=canary)
    db = await make_db(slow_query_ms=0, explain_slow_queries=True)

    async def search(session: AsyncSession) -> int:
        found = await session.scalars(select(Patient).where(Patient.family_name == canary))
        # text() may not name a tenant table (the wall refuses it): a literal on clinics.
        literal = text(f"SELECT count(*) FROM clinics WHERE name = '{canary}'")
        await session.execute(literal)
        return len(list(found))

    async with db.clinic(clinic):
        assert await db.execute_read(search, QueryOptions.for_phi("canary.search")) == 1
    records = [r for r in db.slow_log.records if r.operation == "canary.search"]
    assert records, "slow_query_ms=0 must record every statement"
    assert any("patients" in r.statement for r in records)
    assert any("'?'" in r.statement for r in records)  # the literal was masked, not dropped
    for record in records:
        assert canary not in record.statement
        assert canary not in (record.plan or "")
    assert sample(db, "healthdb_slow_statements_total") >= len(records)
    plans = [r.plan for r in records if r.plan]
    if backend == "postgresql":
        assert plans, "explain_slow_queries=True must capture plans on PostgreSQL"
        assert any("'?'" in plan for plan in plans)  # the planner printed the value: masked
    else:
        assert plans == []
