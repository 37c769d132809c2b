"""Core statements and ``text()`` on tenant tables are refused by the wall; ``execute_raw`` is
the audited escape hatch (guarded SQL, a reason, a scope, and on PostgreSQL row-level security).

Both backends, through the facade (``tests/integration/conftest.py`` fixtures).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from sqlalchemy import Table, delete, func, insert, literal_column, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from structlog.testing import capture_logs

from healthdb import BatchResult, ClinicContextRequired, InvalidInput, UnsafeStatement
from healthdb.internal import connection_wall
from healthdb.models import Appointment, Clinic, Patient
from healthdb.service import DatabaseService
from tests.integration.conftest import MakeClinic, MakePatient, patient_fields

Op = Callable[[AsyncSession], Awaitable[Any]]
PT = cast(Table, Patient.__table__)
AT = cast(Table, Appointment.__table__)


async def _family(db: DatabaseService, clinic: uuid.UUID) -> dict[uuid.UUID, str]:
    """Every patient of ``clinic`` and its family name, read through the ORM wall."""

    async def op(s: AsyncSession) -> dict[uuid.UUID, str]:
        rows = (await s.execute(select(Patient.id, Patient.family_name))).all()
        return {row.id: row.family_name for row in rows}

    async with db.clinic(clinic, role="doctor"):
        return await db.execute_read(op)


@pytest.fixture
async def two_clinics(
    db: DatabaseService, make_clinic: MakeClinic, make_patient: MakePatient
) -> tuple[uuid.UUID, uuid.UUID, str]:
    """Clinics A and B, each with one patient of the same (unique) family name."""
    family = f"Corewall{uuid.uuid4().hex[:10]}"
    a, b = await make_clinic(), await make_clinic()
    await make_patient(a, family_name=family)
    await make_patient(b, family_name=family)
    return a, b, family


# -- A: the wall refuses Core and text() on tenant tables --------------------------------------

CORE_READS: dict[str, Op] = {
    "select table": lambda s: s.execute(select(PT)),
    "select column": lambda s: s.execute(select(PT.c.id)),
    "count": lambda s: s.execute(select(func.count()).select_from(PT)),
    "orm entity joined to a raw table": lambda s: s.execute(
        select(Patient).join(AT, AT.c.patient_id == Patient.id)
    ),
    "raw table in a subquery": lambda s: s.execute(
        select(Patient).where(Patient.id.in_(select(AT.c.patient_id)))
    ),
    "aliased table": lambda s: s.execute(select(PT.alias().c.id)),
    "text": lambda s: s.execute(text("SELECT * FROM patients")),
    "text, quoted and mixed case": lambda s: s.execute(text('SELECT id FROM "Patients"')),
    "text fragment as FROM": lambda s: s.execute(
        select(literal_column("id")).select_from(text("patients"))
    ),
    "literal column subquery": lambda s: s.execute(
        select(literal_column("(SELECT count(*) FROM appointments)"))
    ),
    "textual select": lambda s: s.execute(text("SELECT id FROM users").columns()),
}


def _core_writes(family: str) -> dict[str, Op]:
    return {
        "update": lambda s: s.execute(
            update(PT).where(PT.c.family_name == family).values(family_name="Pwned")
        ),
        "update (table method)": lambda s: s.execute(PT.update().values(family_name="Pwned")),
        "delete": lambda s: s.execute(delete(PT).where(PT.c.family_name == family)),
        "insert": lambda s: s.execute(
            insert(PT).values(id=uuid.uuid4(), clinic_id=uuid.uuid4(), **patient_fields())
        ),
        "text update": lambda s: s.execute(
            text("UPDATE patients SET family_name = :n"), {"n": "Pwned"}
        ),
        "text delete": lambda s: s.execute(text("DELETE FROM patients")),
    }


@pytest.mark.parametrize("name", sorted(CORE_READS))
async def test_core_and_text_reads_on_tenant_tables_are_refused(
    db: DatabaseService, two_clinics: tuple[uuid.UUID, uuid.UUID, str], name: str
) -> None:
    a, _, _ = two_clinics
    async with db.clinic(a, role="doctor"):
        with pytest.raises(UnsafeStatement, match="tenant table") as info:
            await db.execute_read(CORE_READS[name])
    assert info.value.code == "unsafe_statement"
    assert "execute_raw" in str(info.value)  # the error points at the escape hatch
    # Fail closed outside a scope too.
    with pytest.raises(UnsafeStatement):
        await db.execute_read(CORE_READS[name])


async def test_core_and_text_writes_on_tenant_tables_are_refused_and_change_nothing(
    db: DatabaseService, two_clinics: tuple[uuid.UUID, uuid.UUID, str]
) -> None:
    a, b, family = two_clinics
    before = {a: await _family(db, a), b: await _family(db, b)}
    for name, op in _core_writes(family).items():
        async with db.clinic(a, role="doctor"):
            with pytest.raises(UnsafeStatement):
                await db.execute_write(op)
        with pytest.raises(UnsafeStatement):
            await db.execute_write(op)
        assert {a: await _family(db, a), b: await _family(db, b)} == before, name


async def test_unparseable_text_is_refused(db: DatabaseService) -> None:
    with pytest.raises(UnsafeStatement, match="cannot be parsed"):
        await db.execute_read(lambda s: s.execute(text("SELEC (((  FRM")))


async def test_non_tenant_core_and_text_stay_allowed(
    db: DatabaseService, two_clinics: tuple[uuid.UUID, uuid.UUID, str], backend: str
) -> None:
    a, _, _ = two_clinics
    assert (await db.execute_read(lambda s: s.execute(text("SELECT 1")))).scalar_one() == 1

    async def clinics(s: AsyncSession) -> int:
        return int((await s.execute(text("SELECT count(*) FROM clinics"))).scalar_one())

    assert await db.execute_read(clinics) >= 2

    async def core_clinic(s: AsyncSession) -> Any:
        table = Clinic.__table__
        return (await s.execute(select(table.c.id).where(table.c.id == a))).scalar_one()

    assert await db.execute_read(core_clinic) == a

    async def operators(s: AsyncSession) -> int:
        return int((await s.execute(text("SELECT count(*) FROM platform_operators"))).scalar_one())

    assert await db.execute_read(operators) >= 0

    async def version(s: AsyncSession) -> Any:
        return (await s.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()

    assert await db.execute_read(version)
    # ORM statements on tenant tables keep working, of course.
    async with db.clinic(a, role="doctor"):
        assert len(await db.execute_read(lambda s: _orm_count(s))) == 1


async def _orm_count(s: AsyncSession) -> list[Any]:
    return list((await s.execute(select(Patient))).scalars())


@pytest.mark.parametrize("rows", [3, 120])  # 120 takes the COPY + INSERT ... SELECT path on PG
async def test_bulk_insert_still_works(
    db: DatabaseService, make_clinic: MakeClinic, rows: int
) -> None:
    clinic = await make_clinic()
    family = f"Bulk{uuid.uuid4().hex[:10]}"
    items = [patient_fields(family_name=family) for _ in range(rows)]
    async with db.clinic(clinic, role="clinic_admin"):
        result: BatchResult[Any] = await db.execute_batch(items, Patient)
    assert result.ok, result.failures
    assert result.succeeded == rows
    names = await _family(db, clinic)
    assert len(names) == rows
    assert set(names.values()) == {family}


# -- B: the escape hatch ------------------------------------------------------------------------

PATIENTS_BY_FAMILY = "SELECT id, clinic_id, family_name FROM patients WHERE family_name = :family"


def _uuid(backend: str, value: uuid.UUID) -> object:
    """A UUID as a raw ``text()`` parameter: SQLite stores ``Uuid`` columns as 32 hex chars."""
    return value.hex if backend == "sqlite" else value


async def test_raw_needs_a_scope_and_a_reason(db: DatabaseService, make_clinic: MakeClinic) -> None:
    clinic = await make_clinic()
    with pytest.raises(ClinicContextRequired):
        await db.execute_raw("SELECT 1", reason="report")
    async with db.clinic(clinic, role="doctor"):
        for reason in ["", "   ", "x" * 501]:
            with pytest.raises(InvalidInput, match="reason"):
                await db.execute_raw("SELECT 1", reason=reason)
        assert await db.execute_raw("SELECT 1 AS one", reason="x" * 500) == [{"one": 1}]


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SELECT 1; SELECT 2", "one statement"),
        ("SELECT id FROM clinics WHERE id = :id; DROP TABLE clinics", "one statement"),
        ("SELECT id FROM clinics WHERE id = :id -- x", "comments"),
        ("SELECT id FROM clinics /* x */ WHERE id = :id", "comments"),
        ("SELECT id FROM clinics WHERE name = 'Acme'", "string literals"),
        ("SELECT id FROM clinics WHERE id = 1 OR 1 = 1", "number literals"),
        ("DROP TABLE clinics", "DDL"),
        ("TRUNCATE clinics", "DDL"),
        ("CREATE TABLE x (id int)", "DDL"),
        ("UPDATE clinics SET name = :name WHERE id = :id", "read-only"),
        ("SELECT set_config(:k, :v, false)", "set_config"),
    ],
)
async def test_raw_guard_refusals(
    db: DatabaseService, make_clinic: MakeClinic, sql: str, why: str
) -> None:
    clinic = await make_clinic()
    async with db.clinic(clinic, role="doctor"):
        with pytest.raises(UnsafeStatement, match=why):
            await db.execute_raw(sql, {"id": clinic}, reason="guard test")


async def test_raw_parameters_must_match_placeholders(
    db: DatabaseService, make_clinic: MakeClinic
) -> None:
    clinic = await make_clinic()
    async with db.clinic(clinic, role="doctor"):
        with pytest.raises(InvalidInput, match="missing: id"):
            await db.execute_raw("SELECT name FROM clinics WHERE id = :id", reason="r")
        with pytest.raises(InvalidInput, match="unexpected: other"):
            await db.execute_raw(
                "SELECT name FROM clinics WHERE id = :id", {"id": clinic, "other": 1}, reason="r"
            )


async def test_raw_non_tenant_sql_is_allowed_and_logged(
    db: DatabaseService, make_clinic: MakeClinic, backend: str
) -> None:
    clinic = await make_clinic(name="O'Brien & Sons")
    sql = "SELECT name FROM clinics WHERE id = :id AND name = :name"
    with capture_logs() as logs:
        async with db.clinic(clinic, role="doctor", actor=uuid.uuid4()):
            rows = await db.execute_raw(
                sql,
                {"id": _uuid(backend, clinic), "name": "O'Brien & Sons"},
                reason="quarterly report",
            )
    assert rows == [{"name": "O'Brien & Sons"}]
    events = [e for e in logs if e["event"] == "raw_sql"]
    assert len(events) == 1
    event = events[0]
    assert event["log_level"] == "warning"
    assert event["clinic_id"] == str(clinic)
    assert event["actor"]
    assert event["reason_length"] == len("quarterly report")
    assert len(event["fingerprint"]) == 64
    # Never the parameters, never the reason text.
    assert "O'Brien" not in repr(event)
    assert "quarterly" not in repr(event)


async def test_raw_injection_in_a_parameter_is_data(
    db: DatabaseService, make_clinic: MakeClinic, backend: str
) -> None:
    payload = "Robert'); DROP TABLE clinics;--"
    clinic = await make_clinic(name=payload)
    sql = "SELECT id, name FROM clinics WHERE name = :name AND id = :id"
    async with db.clinic(clinic, role="doctor"):
        params = {"name": payload, "id": _uuid(backend, clinic)}
        rows = await db.execute_raw(sql, params, reason="lookup")
        assert rows == [{"id": rows[0]["id"], "name": payload}]
        # The table is still there.
        again = await db.execute_raw("SELECT count(*) AS n FROM clinics", reason="count")
    assert int(str(again[0]["n"])) >= 1


async def test_raw_write_on_non_tenant_table(
    db: DatabaseService, make_clinic: MakeClinic, backend: str
) -> None:
    clinic = await make_clinic(name="Before")
    async with db.clinic(clinic, role="clinic_admin"):
        out = await db.execute_raw(
            "UPDATE clinics SET name = :name WHERE id = :id",
            {"name": "After", "id": _uuid(backend, clinic)},
            reason="rename",
            read_only=False,
        )
        assert out == []
        rows = await db.execute_raw(
            "SELECT name FROM clinics WHERE id = :id", {"id": _uuid(backend, clinic)}, reason="c"
        )
    assert rows == [{"name": "After"}]


async def test_raw_on_tenant_tables(
    db: DatabaseService, two_clinics: tuple[uuid.UUID, uuid.UUID, str], backend: str
) -> None:
    """SQLite has no database wall: raw SQL naming a tenant table is refused there. On
    PostgreSQL it runs under row-level security (migration 0002 + the runtime role + the
    per-transaction ``app.clinic_id``): the raw statement has no clinic filter of its own,
    yet it reads and writes only the scope's rows."""
    a, b, family = two_clinics
    before = {a: await _family(db, a), b: await _family(db, b)}
    # address: a plain column (raw SQL may not write encrypted ones, see the test below)
    update_notes = "UPDATE patients SET address = :notes WHERE family_name = :family"
    if backend == "sqlite":
        async with db.clinic(a, role="doctor"):
            with pytest.raises(UnsafeStatement, match="needs the PostgreSQL database wall"):
                await db.execute_raw(PATIENTS_BY_FAMILY, {"family": family}, reason="report")
            with pytest.raises(UnsafeStatement, match="needs the PostgreSQL database wall"):
                await db.execute_raw(
                    update_notes,
                    {"notes": "reviewed", "family": family},
                    reason="fix",
                    read_only=False,
                )
        assert {a: await _family(db, a), b: await _family(db, b)} == before
        return

    async with db.clinic(a, role="doctor"):
        rows = await db.execute_raw(PATIENTS_BY_FAMILY, {"family": family}, reason="report")
    assert len(rows) == 1  # clinic B's namesake is invisible: row-level security
    assert rows[0]["clinic_id"] == a

    async with db.clinic(a, role="doctor"):
        out = await db.execute_raw(
            update_notes,
            {"notes": "reviewed", "family": family},
            reason="bulk review",
            read_only=False,
        )
    assert out == []

    async def notes(s: AsyncSession) -> list[str | None]:
        return list((await s.execute(select(Patient.address))).scalars())

    async with db.clinic(a, role="doctor"):
        assert await db.execute_read(notes) == ["reviewed"]
    async with db.clinic(b, role="doctor"):
        assert await db.execute_read(notes) == [None]  # clinic B's row was not touched


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE patients SET notes = :v WHERE id = :id",
        "UPDATE patients SET ssn = :v WHERE id = :id",
        "UPDATE patients SET ssn_index = :v WHERE id = :id",
        "UPDATE patients SET phone = :v WHERE notes IS NULL AND id = :id",
        "INSERT INTO patients (id, notes) VALUES (:id, :v)",
        "INSERT INTO patients VALUES (:id, :v)",
    ],
)
async def test_raw_writes_never_touch_encrypted_columns(
    db: DatabaseService, two_clinics: tuple[uuid.UUID, uuid.UUID, str], sql: str
) -> None:
    """Raw SQL would store plaintext in an encrypted column (or an index under no key), and
    the row would then fail to decrypt: refused on both backends, before the wall check."""
    a, _, _ = two_clinics
    async with db.clinic(a, role="doctor"):
        with pytest.raises(UnsafeStatement, match="encrypted column"):
            await db.execute_raw(
                sql, {"v": "x", "id": str(uuid.uuid4())}, reason="fix", read_only=False
            )


# -- C: statements on the session's connection (below the ORM wall) ----------------------------


ON_CONNECTION: dict[str, Op] = {
    "core select": lambda s: _run(s, lambda c: c.execute(select(PT.c.clinic_id))),
    "orm select": lambda s: _run(s, lambda c: c.execute(select(Patient.clinic_id))),
    "text": lambda s: _run(s, lambda c: c.execute(text("SELECT clinic_id FROM patients"))),
    "orm select beside text": lambda s: _run(
        s, lambda c: c.execute(select(Patient.clinic_id).where(text("1 = 1")))
    ),
    "driver sql": lambda s: _run(s, lambda c: c.exec_driver_sql("SELECT clinic_id FROM patients")),
    "core update": lambda s: _run(s, lambda c: c.execute(update(PT).values(notes=None))),
    "orm delete": lambda s: _run(s, lambda c: c.execute(delete(Patient))),
    "core insert": lambda s: _run(
        s, lambda c: c.execute(insert(PT).values(id=uuid.uuid4(), clinic_id=uuid.uuid4()))
    ),
}


async def _run(session: AsyncSession, statement: Callable[[Any], Awaitable[Any]]) -> Any:
    result = await statement(await session.connection())
    return list(result.scalars()) if result.returns_rows else result.rowcount


@pytest.mark.parametrize("name", sorted(ON_CONNECTION))
async def test_tenant_sql_on_the_sessions_connection_is_refused(
    db: DatabaseService, two_clinics: tuple[uuid.UUID, uuid.UUID, str], name: str
) -> None:
    """``await session.connection()`` skips the ORM wall; the connection wall refuses any
    statement on it that names a tenant table, on both backends (on SQLite nothing else
    would stop it reading or writing every clinic's rows)."""
    a, b, _ = two_clinics
    before = {a: await _family(db, a), b: await _family(db, b)}
    async with db.clinic(a, role="doctor"):
        with pytest.raises(UnsafeStatement, match="bypasses the clinic wall"):
            await db.execute_write(ON_CONNECTION[name])
    assert {a: await _family(db, a), b: await _family(db, b)} == before


async def test_the_connection_wall_lets_the_librarys_own_statements_through(
    db: DatabaseService, two_clinics: tuple[uuid.UUID, uuid.UUID, str]
) -> None:
    """Non-tenant SQL on the connection runs; ORM reads, flushes and audited PHI reads,
    whose statements reach the same connection, are unaffected."""
    a, _, family = two_clinics

    async def mixed(session: AsyncSession) -> tuple[Any, ...]:
        conn = await session.connection()
        one = (await conn.execute(text("SELECT 1"))).scalar_one()
        clinics = (await conn.execute(select(func.count()).select_from(Clinic))).scalar_one()
        found = await session.execute(select(Patient).where(Patient.family_name == family))
        patient = found.scalar_one()
        patient.notes = "seen"
        await session.flush()
        return one, clinics >= 2, patient.clinic_id

    async with db.clinic(a, role="doctor"):
        assert await db.execute_write(mixed) == (1, True, a)


async def test_without_the_connection_wall_sqlite_leaks(
    db: DatabaseService, two_clinics: tuple[uuid.UUID, uuid.UUID, str], backend: str
) -> None:
    """The mutation: take the connection wall away and the same Core read sees clinic B
    on SQLite (no database wall); PostgreSQL's row-level security still hides it."""
    a, b, _ = two_clinics
    engine = db.engines.primary.sync_engine
    connection_wall.remove(engine)
    try:
        async with db.clinic(a, role="doctor"):
            seen = set(await db.execute_read(ON_CONNECTION["core select"]))
    finally:
        connection_wall.install(engine)
    assert (b in seen) == (backend == "sqlite")
    assert a in seen
