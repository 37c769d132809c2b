"""Anchors of the audit chain heads, on both backends: what a chain alone cannot show
(rows deleted from its end, a chain rewritten with recomputed hashes) fails verification
against an anchor taken before the tampering.

Tampering is done as in ``test_audit_chain``: as the owner, append-only trigger out of the
way, rolled back (or, for the CLI, committed into a database of the test's own).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from healthdb import audit_log
from healthdb import cli as library_cli
from healthdb.internal import audit
from healthdb.internal.audit_anchor import Anchor
from healthdb.internal.audit_verify import VerifyResult, take_anchor, verify
from healthdb.models import AuditEvent, Clinic
from healthdb.service import DatabaseService
from healthdb_api import cli as service_cli
from tests.integration.conftest import MakeClinic
from tests.integration.test_audit_chain import (
    BACKENDS,
    _engine,
    _event,
    _seed,
    _where,
    tampering,
)


@pytest.fixture
def owner_url(migrated_url: str, request: pytest.FixtureRequest) -> str:
    """The database behind ``migrated_url`` as its owner (same backend, no cross product)."""
    if migrated_url.startswith("postgresql"):
        return str(request.getfixturevalue("pg_admin_migrated_url"))
    return migrated_url


async def _append(db: DatabaseService, clinic: uuid.UUID, n: int, start: int = 0) -> None:
    async with db.clinic(clinic, role="doctor"):
        for i in range(start, start + n):

            async def op(session: AsyncSession, i: int = i) -> None:
                await audit.append(session, _event(i))

            await db.execute_write(op)


@pytest.fixture
async def chain(db: DatabaseService, make_clinic: MakeClinic) -> uuid.UUID:
    """A clinic with a committed, intact chain of 6 events."""
    clinic = await make_clinic()
    await _append(db, clinic, 6)
    return clinic


async def _as_owner(owner_url: str, clinic: uuid.UUID | None = None) -> Anchor:
    """An anchor of ``clinic``'s lanes (every clinic's, unfiltered, when None)."""
    engine = _engine(owner_url)
    try:
        async with engine.connect() as conn, conn.begin(), AsyncSession(bind=conn) as session:
            anchor = await take_anchor(session)
    finally:
        await engine.dispose()
    if clinic is None:
        return anchor
    heads = {key: head for key, head in anchor.heads.items() if key[0] == clinic}
    return Anchor(taken_at=anchor.taken_at, heads=heads)


async def _hash_at(session: AsyncSession, clinic: uuid.UUID, seq: int) -> str:
    statement = select(AuditEvent.row_hash).where(_where(clinic, seq))
    value = (await session.execute(statement)).scalar_one()
    assert value is not None
    return value


# -- what an anchor adds ----------------------------------------------------------------------


async def test_a_clean_chain_verifies_against_its_anchor(owner_url: str, chain: uuid.UUID) -> None:
    anchor = await _as_owner(owner_url, chain)
    async with tampering(owner_url) as (_, session):  # only to read as the owner
        assert dict(anchor.heads) == {(chain, 0): (6, await _hash_at(session, chain, 6))}
        assert await verify(session, chain, anchor) == VerifyResult(ok=True, checked=6)
        assert Anchor.from_json(anchor.to_json()) == anchor


async def test_deleting_the_newest_rows_fails_only_against_an_anchor(
    owner_url: str, chain: uuid.UUID
) -> None:
    anchor = await _as_owner(owner_url, chain)
    async with tampering(owner_url) as (_, session):
        await session.execute(delete(AuditEvent).where(_where(chain, 6)))
        # The documented gap: what is left is a valid, shorter chain.
        assert await verify(session, chain) == VerifyResult(ok=True, checked=5)
        result = await verify(session, chain, anchor)
    assert not result.ok
    assert result.checked == 5
    bad = result.first_bad
    assert bad is not None
    assert (bad.clinic_id, bad.lane, bad.seq) == (chain, 0, 6)
    assert "missing" in bad.reason
    assert "deleted from the end" in bad.reason
    assert anchor.taken_at.isoformat(timespec="seconds") in bad.reason


async def test_a_lane_emptied_entirely_fails_against_its_anchor(
    owner_url: str, chain: uuid.UUID
) -> None:
    anchor = await _as_owner(owner_url, chain)
    async with tampering(owner_url) as (_, session):
        await session.execute(delete(AuditEvent).where(AuditEvent.clinic_id == chain))
        assert await verify(session, chain) == VerifyResult(ok=True, checked=0)
        result = await verify(session, chain, anchor)
    assert result.first_bad is not None
    assert (result.first_bad.seq, result.checked) == (6, 0)
    assert "deleted from the end" in result.first_bad.reason


async def test_a_rewritten_chain_with_recomputed_hashes_fails_against_an_anchor(
    owner_url: str, chain: uuid.UUID
) -> None:
    anchor = await _as_owner(owner_url, chain)
    async with tampering(owner_url) as (_, session):
        statement = select(AuditEvent).where(AuditEvent.clinic_id == chain).order_by(AuditEvent.seq)
        rows = list((await session.execute(statement)).scalars())
        rows[2].resource_id = "p-999"  # seq 3, then forge every link after it
        prev = rows[1].row_hash
        for row in rows[2:]:
            row.prev_hash = prev
            row.row_hash = prev = audit.row_hash({n: getattr(row, n) for n in audit.SEALED})
        await session.flush()
        # A consistent forgery: the chain alone cannot tell.
        assert await verify(session, chain) == VerifyResult(ok=True, checked=6)
        result = await verify(session, chain, anchor)
    assert result.first_bad is not None
    assert (result.first_bad.clinic_id, result.first_bad.lane, result.first_bad.seq) == (
        chain,
        0,
        6,
    )
    assert "differs from the anchor" in result.first_bad.reason
    assert "rewritten" in result.first_bad.reason


async def test_rows_appended_after_the_anchor_still_verify(
    db: DatabaseService, owner_url: str, chain: uuid.UUID
) -> None:
    anchor = await _as_owner(owner_url, chain)
    await _append(db, chain, 3, start=6)
    async with tampering(owner_url) as (_, session):
        assert await verify(session, chain, anchor) == VerifyResult(ok=True, checked=9)
        # What anchors do not prove: rows after the newest anchor are chain-protected only.
        await session.execute(delete(AuditEvent).where(_where(chain, 9)))
        assert (await verify(session, chain, anchor)).ok
        await session.execute(delete(AuditEvent).where(_where(chain, 6)))
        assert not (await verify(session, chain, anchor)).ok  # a gap at 6 (7, 8 remain)


async def test_an_anchored_clinic_without_any_row_fails(owner_url: str, chain: uuid.UUID) -> None:
    ghost = uuid.uuid4()
    anchor = Anchor(taken_at=dt.datetime.now(dt.UTC), heads={(ghost, 1): (4, "a" * 64)})
    async with tampering(owner_url) as (_, session):  # only to read as the owner
        result = await verify(session, ghost, anchor)
        bad = result.first_bad
        assert bad is not None
        assert (bad.clinic_id, bad.lane, bad.seq, result.checked) == (ghost, 1, 4, 0)
        assert "deleted from the end" in bad.reason
        # Another clinic's entries are not this clinic's business.
        assert await verify(session, chain, anchor) == VerifyResult(ok=True, checked=6)


async def test_an_anchor_under_a_clinic_scope_covers_only_that_clinic(
    db: DatabaseService, make_clinic: MakeClinic, owner_url: str
) -> None:
    a, b = await make_clinic(), await make_clinic()
    await _append(db, a, 3)
    await _append(db, b, 2)
    async with db.clinic(a, role="clinic_admin"):
        anchor = await db.execute_read(audit_log.take_anchor)
        assert set(anchor.heads) == {(a, 0)}
        assert anchor.heads[(a, 0)][0] == 3
        result = await db.execute_read(lambda session: audit_log.verify(session, anchor=anchor))
        assert result == VerifyResult(ok=True, checked=3)

    # An owner's anchor of both: under a's scope, b's (unreachable) head is not checked.
    owner = await _as_owner(owner_url)
    forged = dict(owner.heads)
    forged[(b, 0)] = (99, "b" * 64)
    both = Anchor(taken_at=owner.taken_at, heads=forged)
    async with db.clinic(a, role="clinic_admin"):
        result = await db.execute_read(lambda session: audit_log.verify(session, anchor=both))
        assert result == VerifyResult(ok=True, checked=3)
    async with db.clinic(b, role="clinic_admin"):
        result = await db.execute_read(lambda session: audit_log.verify(session, anchor=both))
        assert result.first_bad is not None
        assert (result.first_bad.clinic_id, result.first_bad.seq) == (b, 99)


# -- healthdb audit anchor / verify --anchor --------------------------------------------------


@pytest.fixture(params=BACKENDS)
def fresh_url(request: pytest.FixtureRequest) -> str:
    """A database of the test's own, migrated: these tests commit their tampering."""
    from healthdb import migrate

    url = str(request.getfixturevalue(request.param))
    asyncio.run(migrate.upgrade(url))
    return url


def _invoke(app: object, url: str, *args: str) -> tuple[int, str]:
    env = {"HEALTHDB_DATABASE_URL": url, "HEALTHDB_ADMIN_DATABASE_URL": url}
    result = CliRunner().invoke(app, ["audit", *args], env=env)  # type: ignore[arg-type]
    return result.exit_code, result.output


async def _delete_newest(url: str, clinic: uuid.UUID, seq: int) -> None:
    async with tampering(url, commit=True) as (_, session):
        await session.execute(delete(AuditEvent).where(_where(clinic, seq)))


async def _delete_clinic(url: str, clinic: uuid.UUID) -> None:
    async with tampering(url, commit=True) as (_, session):
        await session.execute(delete(AuditEvent).where(AuditEvent.clinic_id == clinic))
        await session.execute(delete(Clinic).where(Clinic.id == clinic))


def test_cli_anchor_then_verify_round_trip(fresh_url: str, tmp_path: Path) -> None:
    a, b = asyncio.run(_seed(fresh_url, clinics=2, events=3))
    code, output = _invoke(library_cli.app, fresh_url, "anchor")
    assert code == 0
    printed = Anchor.from_json(output)
    assert {key: seq for key, (seq, _) in printed.heads.items()} == {(a, 0): 3, (b, 0): 3}

    path = tmp_path / "anchor.json"
    code, output = _invoke(library_cli.app, fresh_url, "anchor", "--out", str(path))
    assert code == 0
    assert Anchor.from_json(path.read_text()).heads == printed.heads
    code, output = _invoke(library_cli.app, fresh_url, "anchor", "--out", str(path))
    assert code == 2
    assert "already exists" in output
    assert "--force" in output
    code, _ = _invoke(service_cli.app, fresh_url, "anchor", "--out", str(path), "--force")
    assert code == 0

    code, output = _invoke(library_cli.app, fresh_url, "verify", "--anchor", str(path))
    assert (code, output.strip()) == (0, "audit chain intact: 6 rows")

    asyncio.run(_delete_newest(fresh_url, a, 3))
    code, output = _invoke(library_cli.app, fresh_url, "verify")
    assert (code, output.strip()) == (0, "audit chain intact: 5 rows")  # the gap, without one
    code, output = _invoke(library_cli.app, fresh_url, "verify", "--anchor", str(path))
    assert code == 1
    assert f"clinic {a}, seq 3 (lane 0)" in output
    assert "deleted from the end" in output

    # A whole clinic's trail, and the clinic with it, is no way out either.
    asyncio.run(_delete_clinic(fresh_url, b))
    code, output = _invoke(
        service_cli.app, fresh_url, "verify", "--clinic-id", str(b), "--anchor", str(path)
    )
    assert code == 1
    assert f"clinic {b}, seq 3" in output


def test_cli_anchor_catches_a_deleted_clinic(fresh_url: str, tmp_path: Path) -> None:
    a, b = asyncio.run(_seed(fresh_url, clinics=2, events=2))
    path = tmp_path / "anchor.json"
    assert _invoke(library_cli.app, fresh_url, "anchor", "--out", str(path))[0] == 0
    asyncio.run(_delete_clinic(fresh_url, b))
    code, output = _invoke(library_cli.app, fresh_url, "verify")
    assert (code, output.strip()) == (0, "audit chain intact: 2 rows")
    code, output = _invoke(library_cli.app, fresh_url, "verify", "--anchor", str(path))
    assert code == 1
    assert f"clinic {b}, seq 2" in output
    assert a != b


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("{oops", id="bad-json"),
        pytest.param(json.dumps({"format": "healthdb-audit-anchor/9"}), id="format"),
        pytest.param(None, id="missing-file"),
    ],
)
def test_cli_verify_refuses_a_bad_anchor_file(
    sqlite_empty_url: str, tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "anchor.json"
    if content is not None:
        path.write_text(content)
    code, output = _invoke(library_cli.app, sqlite_empty_url, "verify", "--anchor", str(path))
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0]
    assert "Traceback" not in output
