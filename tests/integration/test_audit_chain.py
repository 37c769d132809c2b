"""The audit hash chain (``healthdb.internal.audit``), migration 0003's append-only triggers,
and ``healthdb audit verify`` — on both backends.

Appends go through the facade as the runtime role. Tampering is done as the owner with the
trigger disabled (PostgreSQL) or dropped (SQLite), inside a transaction that is rolled back,
so the shared databases keep intact chains; the CLI tests commit their tampering into a
database of their own.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import ColumnElement, and_, delete, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.sql.expression import Executable
from typer.testing import CliRunner

from healthdb import cli as library_cli
from healthdb import migrate
from healthdb.engine import create_engine
from healthdb.internal import audit, audit_verify
from healthdb.models import AuditEvent, Clinic
from healthdb.models.base import utcnow
from healthdb.service import DatabaseService
from healthdb.settings import Settings
from healthdb_api import cli as service_cli
from tests.integration.conftest import MakeClinic

APPEND_ONLY = "append-only"
SET_CLINIC = text("SELECT set_config('app.clinic_id', :c, true)")
SQLITE_TRIGGERS = ("audit_events_no_update", "audit_events_no_delete")
AppendMany = Callable[..., Awaitable[None]]


def _engine(url: str) -> AsyncEngine:
    settings = Settings(database_url=url)
    return create_engine(settings.url, settings, pool_size=1, max_overflow=0)


@pytest.fixture
def owner_url(migrated_url: str, request: pytest.FixtureRequest) -> str:
    """The database behind ``migrated_url`` as its owner (same backend, no cross product)."""
    if migrated_url.startswith("postgresql"):
        return str(request.getfixturevalue("pg_admin_migrated_url"))
    return migrated_url


def _event(i: int = 0) -> AuditEvent:
    return AuditEvent(
        action="read",
        resource_type="patient",
        resource_id=f"p-{i}",
        phi_fields=["given_name", "date_of_birth"],
        purpose="treatment",
        reason="O'Brien's chart — ünïcode",
    )


@pytest.fixture
def append_many(db: DatabaseService) -> AppendMany:
    """``await append_many(clinic_id, n)``: n events, each in its own facade write."""

    async def run(clinic_id: uuid.UUID, n: int, start: int = 0) -> None:
        async with db.clinic(clinic_id, role="doctor"):
            for i in range(start, start + n):

                async def op(session: AsyncSession, i: int = i) -> None:
                    await audit.append(session, _event(i))

                await db.execute_write(op)

    return run


@asynccontextmanager
async def tampering(
    owner_url: str, *, commit: bool = False
) -> AsyncIterator[tuple[AsyncConnection, AsyncSession]]:
    """An owner transaction with the append-only trigger out of the way: rolled back, or
    (``commit``) committed with the trigger restored."""
    engine = _engine(owner_url)
    postgres = owner_url.startswith("postgresql")
    try:
        async with engine.connect() as conn:
            transaction = await conn.begin()
            try:
                if postgres:
                    await conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
                else:
                    for name in SQLITE_TRIGGERS:
                        await conn.execute(text(f"DROP TRIGGER {name}"))
                async with AsyncSession(bind=conn) as session:
                    yield conn, session
                    await session.flush()
            except BaseException:
                await transaction.rollback()
                raise
            if not commit:
                await transaction.rollback()
                return
            if postgres:
                await conn.execute(text("ALTER TABLE audit_events ENABLE TRIGGER USER"))
            else:
                for verb, name in zip(("UPDATE", "DELETE"), SQLITE_TRIGGERS, strict=True):
                    await conn.execute(
                        text(
                            f"CREATE TRIGGER {name} BEFORE {verb} ON audit_events "
                            f"BEGIN SELECT RAISE(ABORT, 'audit_events is {APPEND_ONLY}'); END"
                        )
                    )
            await transaction.commit()
    finally:
        await engine.dispose()


async def _verify(owner_url: str, clinic_id: uuid.UUID | None = None) -> audit_verify.VerifyResult:
    engine = _engine(owner_url)
    try:
        async with engine.connect() as conn, conn.begin(), AsyncSession(bind=conn) as session:
            return await audit_verify.verify(session, clinic_id)
    finally:
        await engine.dispose()


# -- a clean chain ----------------------------------------------------------------------------


async def test_clean_chains_over_two_clinics_verify(
    db: DatabaseService, make_clinic: MakeClinic, append_many: AppendMany, owner_url: str
) -> None:
    a, b = await make_clinic(), await make_clinic()
    for start in range(0, 50, 10):  # interleaved: 25 events per clinic
        await append_many(a, 5, start)
        await append_many(b, 5, start + 5)

    for clinic in (a, b):
        result = await _verify(owner_url, clinic)
        assert result == audit_verify.VerifyResult(ok=True, checked=25)

    engine = _engine(owner_url)
    try:
        async with engine.connect() as conn, AsyncSession(bind=conn) as session:
            rows = (
                await session.execute(
                    select(AuditEvent).where(AuditEvent.clinic_id == a).order_by(AuditEvent.seq)
                )
            ).scalars()
            chain = list(rows)
    finally:
        await engine.dispose()
    assert [e.seq for e in chain] == list(range(1, 26))
    assert chain[0].prev_hash == audit.GENESIS_HASH
    assert all(e.prev_hash == p.row_hash for p, e in itertools.pairwise(chain))
    assert chain[0].phi_fields == ["given_name", "date_of_birth"]

    # The runtime role, under the clinic's scope, can verify its own chain (and only it).
    async with db.clinic(a, role="clinic_admin"):
        result = await db.execute_read(lambda session: audit_verify.verify(session))
        assert result == audit_verify.VerifyResult(ok=True, checked=25)
        with pytest.raises(Exception, match="only that clinic"):
            await db.execute_read(lambda session: audit_verify.verify(session, b))


async def test_concurrent_appends_give_a_gapless_chain(
    db: DatabaseService, make_clinic: MakeClinic, owner_url: str
) -> None:
    clinic = await make_clinic()

    async def one(i: int) -> int:
        async def op(session: AsyncSession) -> int:
            event = await audit.append(session, _event(i))
            assert event.seq is not None
            return event.seq

        async with db.clinic(clinic, role="doctor"):
            return await db.execute_write(op)

    seqs = await asyncio.gather(*(one(i) for i in range(20)))
    assert sorted(seqs) == list(range(1, 21))
    assert await _verify(owner_url, clinic) == audit_verify.VerifyResult(ok=True, checked=20)


# -- append-only in the database ------------------------------------------------------------


def _tampering_statements(clinic: uuid.UUID) -> list[Executable]:
    return [
        update(AuditEvent).where(AuditEvent.clinic_id == clinic).values(reason="tampered"),
        delete(AuditEvent).where(AuditEvent.clinic_id == clinic),
    ]


async def test_runtime_role_cannot_update_or_delete(
    migrated_url: str, make_clinic: MakeClinic, append_many: AppendMany, backend: str
) -> None:
    clinic = await make_clinic()
    await append_many(clinic, 2)
    # PostgreSQL: the grants refuse first (the trigger stands behind them); SQLite: the trigger.
    refused = "permission denied" if backend == "postgresql" else APPEND_ONLY
    engine = _engine(migrated_url)
    try:
        for statement in _tampering_statements(clinic):
            async with engine.begin() as conn:
                if backend == "postgresql":
                    await conn.execute(SET_CLINIC, {"c": str(clinic)})
                with pytest.raises(DBAPIError, match=refused):
                    await conn.execute(statement)
    finally:
        await engine.dispose()


async def test_owner_is_refused_too_while_the_trigger_stands(
    owner_url: str, make_clinic: MakeClinic, append_many: AppendMany, backend: str
) -> None:
    clinic = await make_clinic()
    await append_many(clinic, 2)
    statements: list[Executable] = _tampering_statements(clinic)
    if backend == "postgresql":
        statements.append(text("TRUNCATE audit_events"))
    engine = _engine(owner_url)
    try:
        for statement in statements:
            async with engine.begin() as conn:
                with pytest.raises(DBAPIError, match=APPEND_ONLY):
                    await conn.execute(statement)
    finally:
        await engine.dispose()
    assert await _verify(owner_url, clinic) == audit_verify.VerifyResult(ok=True, checked=2)


async def test_seq_is_unique_per_clinic(
    owner_url: str, make_clinic: MakeClinic, append_many: AppendMany
) -> None:
    clinic = await make_clinic()
    await append_many(clinic, 1)
    engine = _engine(owner_url)
    try:
        async with engine.connect() as conn, conn.begin(), AsyncSession(bind=conn) as session:
            session.add(AuditEvent(clinic_id=clinic, seq=1, action="x", resource_type="y"))
            with pytest.raises(DBAPIError, match=r"(?i)unique"):
                await session.flush()
    finally:
        await engine.dispose()


# -- tampering is evident -------------------------------------------------------------------


@pytest.fixture
async def chain(make_clinic: MakeClinic, append_many: AppendMany) -> uuid.UUID:
    """A clinic with a committed, intact chain of 6 events."""
    clinic = await make_clinic()
    await append_many(clinic, 6)
    return clinic


def _where(clinic: uuid.UUID, seq: int) -> ColumnElement[bool]:
    return and_(AuditEvent.clinic_id == clinic, AuditEvent.seq == seq)


async def test_edited_row_is_named(owner_url: str, chain: uuid.UUID) -> None:
    async with tampering(owner_url) as (_, session):
        await session.execute(
            update(AuditEvent).where(_where(chain, 3)).values(resource_id="p-999")
        )
        result = await audit_verify.verify(session, chain)
    assert not result.ok
    assert result.first_bad is not None
    assert (result.first_bad.clinic_id, result.first_bad.seq) == (chain, 3)
    assert "row_hash" in result.first_bad.reason
    assert result.checked == 3


async def test_edited_row_with_recomputed_hash_breaks_the_next_link(
    owner_url: str, chain: uuid.UUID
) -> None:
    async with tampering(owner_url) as (_, session):
        row = (await session.execute(select(AuditEvent).where(_where(chain, 3)))).scalar_one()
        row.resource_id = "p-999"
        fields = {name: getattr(row, name) for name in audit.SEALED}
        row.row_hash = audit.row_hash(fields)
        await session.flush()
        result = await audit_verify.verify(session, chain)
    assert result.first_bad is not None
    assert result.first_bad.seq == 4
    assert "prev_hash" in result.first_bad.reason


async def test_deleted_row_is_named_as_a_gap(owner_url: str, chain: uuid.UUID) -> None:
    async with tampering(owner_url) as (_, session):
        await session.execute(delete(AuditEvent).where(_where(chain, 4)))
        result = await audit_verify.verify(session, chain)
    assert result.first_bad is not None
    assert result.first_bad.seq == 4
    assert "missing" in result.first_bad.reason
    assert "deleted" in result.first_bad.reason


async def test_deleted_tail_row_is_not_named_but_first_row_is(
    owner_url: str, chain: uuid.UUID
) -> None:
    # Deleting the newest row leaves a shorter valid chain (only an anchor catches it:
    # test_audit_anchor.py); deleting the first is a gap at seq 1.
    async with tampering(owner_url) as (_, session):
        await session.execute(delete(AuditEvent).where(_where(chain, 1)))
        result = await audit_verify.verify(session, chain)
    assert result.first_bad is not None
    assert result.first_bad.seq == 1


async def test_forged_rows_are_detected(owner_url: str, chain: uuid.UUID) -> None:
    async def last_hash(session: AsyncSession, seq: int) -> str:
        value = (
            await session.execute(select(AuditEvent.row_hash).where(_where(chain, seq)))
        ).scalar_one()
        assert value is not None
        return value

    # A forged row at the end with a made-up hash.
    async with tampering(owner_url) as (_, session):
        session.add(
            AuditEvent(
                clinic_id=chain,
                seq=7,
                occurred_at=utcnow(),
                action="read",
                resource_type="patient",
                prev_hash=await last_hash(session, 6),
                row_hash="f" * 64,
            )
        )
        await session.flush()
        result = await audit_verify.verify(session, chain)
    assert result.first_bad is not None
    assert result.first_bad.seq == 7
    assert "row_hash" in result.first_bad.reason

    # A row without a place in the chain.
    async with tampering(owner_url) as (_, session):
        session.add(AuditEvent(clinic_id=chain, action="read", resource_type="patient"))
        await session.flush()
        result = await audit_verify.verify(session, chain)
    assert result.first_bad is not None
    assert result.first_bad.seq is None

    # A well-formed row squeezed in at seq 3 (unique index dropped): a duplicate position.
    async with tampering(owner_url) as (conn, session):
        await conn.execute(text("DROP INDEX ix_audit_events_clinic_id_lane_seq"))
        forged = AuditEvent(
            id=uuid.uuid4(),
            clinic_id=chain,
            seq=3,
            occurred_at=utcnow(),
            action="read",
            resource_type="patient",
            phi_fields=[],
            outcome="success",
            prev_hash=await last_hash(session, 2),
        )
        forged.row_hash = audit.row_hash({n: getattr(forged, n) for n in audit.SEALED})
        session.add(forged)
        await session.flush()
        result = await audit_verify.verify(session, chain)
    assert result.first_bad is not None
    assert result.first_bad.seq == 3
    assert "duplicate" in result.first_bad.reason or "link" in result.first_bad.reason


async def test_swapped_rows_are_detected(owner_url: str, chain: uuid.UUID) -> None:
    async with tampering(owner_url) as (_, session):
        for old, new in ((2, -2), (3, 2), (-2, 3)):
            await session.execute(update(AuditEvent).where(_where(chain, old)).values(seq=new))
        result = await audit_verify.verify(session, chain)
    assert result.first_bad is not None
    assert result.first_bad.seq == 2
    assert "row_hash" in result.first_bad.reason


async def test_tampering_was_rolled_back(owner_url: str, chain: uuid.UUID) -> None:
    async with tampering(owner_url) as (_, session):
        await session.execute(delete(AuditEvent).where(AuditEvent.clinic_id == chain))
    assert await _verify(owner_url, chain) == audit_verify.VerifyResult(ok=True, checked=6)


# -- healthdb audit verify ------------------------------------------------------------------

BACKENDS = [
    pytest.param("sqlite_empty_url", id="sqlite"),
    pytest.param("pg_empty_url", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def fresh_url(request: pytest.FixtureRequest) -> str:
    """A database of the test's own, migrated: the CLI tests commit their tampering."""
    url = str(request.getfixturevalue(request.param))
    asyncio.run(migrate.upgrade(url))
    return url


async def _seed(url: str, clinics: int, events: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(clinics)]
    engine = _engine(url)
    try:
        async with engine.connect() as conn, conn.begin(), AsyncSession(bind=conn) as session:
            session.add_all(Clinic(id=cid, name="CLI clinic") for cid in ids)
            await session.flush()
            for cid in ids:
                for i in range(events):
                    event = _event(i)
                    event.clinic_id = cid
                    await audit.append(session, event)
            await session.commit()
    finally:
        await engine.dispose()
    return ids


async def _tamper(url: str, clinic: uuid.UUID, seq: int) -> None:
    async with tampering(url, commit=True) as (_, session):
        await session.execute(update(AuditEvent).where(_where(clinic, seq)).values(reason="x"))


def _invoke(app: object, url: str, *args: str) -> tuple[int, str]:
    env = {"HEALTHDB_DATABASE_URL": url, "HEALTHDB_ADMIN_DATABASE_URL": url}
    result = CliRunner().invoke(app, ["audit", "verify", *args], env=env)  # type: ignore[arg-type]
    return result.exit_code, result.output


def test_cli_audit_verify_exit_codes(fresh_url: str) -> None:
    a, b = asyncio.run(_seed(fresh_url, clinics=2, events=4))

    code, output = _invoke(library_cli.app, fresh_url)
    assert (code, output.strip()) == (0, "audit chain intact: 8 rows")
    code, output = _invoke(service_cli.app, fresh_url)  # the service CLI has it too
    assert (code, output.strip()) == (0, "audit chain intact: 8 rows")

    asyncio.run(_tamper(fresh_url, a, 2))
    code, output = _invoke(library_cli.app, fresh_url)
    assert code == 1
    assert f"clinic {a}, seq 2" in output
    assert "row_hash" in output

    code, output = _invoke(library_cli.app, fresh_url, "--clinic-id", str(b))
    assert (code, output.strip()) == (0, "audit chain intact: 4 rows")
    code, output = _invoke(service_cli.app, fresh_url, "--clinic-id", str(a))
    assert code == 1
    assert f"clinic {a}, seq 2" in output

    code, output = _invoke(library_cli.app, fresh_url, "--clinic-id", "not-a-uuid")
    assert code == 2

    # The trigger is back after the committed tampering.
    async def refused() -> None:
        engine = _engine(fresh_url)
        try:
            for statement in _tampering_statements(a):
                async with engine.begin() as conn:
                    with pytest.raises(DBAPIError, match=APPEND_ONLY):
                        await conn.execute(statement)
        finally:
            await engine.dispose()

    asyncio.run(refused())


def test_cli_audit_verify_on_an_empty_database(fresh_url: str) -> None:
    code, output = _invoke(library_cli.app, fresh_url)
    assert (code, output.strip()) == (0, "audit chain intact: 0 rows")
