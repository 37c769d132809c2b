"""Reading the audit chains back: verify every chain, and take an anchor of their heads.

:func:`verify` walks each (clinic, lane) chain written by :mod:`healthdb.internal.audit` in
``seq`` order and names the first broken row: an edited row (hash mismatch), a deleted one
(a gap in ``seq``), an inserted one (duplicate ``seq``, or a ``prev_hash`` that does not
link), or reordered rows.

A chain alone cannot show that its newest rows were deleted (what is left is still a valid
chain), nor that the database owner rewrote rows and recomputed every hash after them.
:func:`take_anchor` records each lane's head as an :class:`~.audit_anchor.Anchor` to keep
outside the database; ``verify(..., anchor=...)`` then also checks that every anchored head
is still in its chain with the same ``row_hash``. Rows appended after the anchor are checked
by the chain only.

Both read the way the owner's tooling must on PostgreSQL: with ``FORCE ROW LEVEL SECURITY``
even the (non-superuser) table owner sees only the rows of the clinic named by
``app.clinic_id``, so the setting is switched per clinic and restored afterwards.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb.context import current_scope
from healthdb.errors import InvalidInput
from healthdb.internal.audit import GENESIS_HASH, SEALED, row_hash
from healthdb.internal.audit_anchor import Anchor, Head, LaneKey
from healthdb.models import AuditEvent, Clinic

__all__ = ["BadRow", "VerifyResult", "take_anchor", "verify"]

# The transaction-local setting row-level security reads (migration 0002).
_CLINIC_SETTING = "app.clinic_id"
_STREAM_BATCH = 1000
_COLUMNS = tuple(getattr(AuditEvent, name) for name in (*SEALED, "row_hash"))


@dataclass(frozen=True, slots=True)
class BadRow:
    """The first row where a chain breaks. ``seq`` is ``None`` for a row without one."""

    clinic_id: uuid.UUID
    seq: int | None
    reason: str
    lane: int = 0


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """``ok`` when every chain verified; ``checked`` rows walked; else the ``first_bad``."""

    ok: bool
    checked: int
    first_bad: BadRow | None = None


async def _clinics(session: AsyncSession, clinic_id: uuid.UUID | None) -> list[uuid.UUID]:
    scope = current_scope()
    if scope is not None:
        # Under a scope only the scope's rows are visible: verifying another clinic would
        # walk an empty chain and wrongly report it intact.
        if clinic_id is not None and clinic_id != scope.clinic_id:
            raise InvalidInput("under a clinic scope only that clinic's chain can be verified")
        return [scope.clinic_id]
    if clinic_id is not None:
        return [clinic_id]
    return list((await session.execute(select(Clinic.id).order_by(Clinic.id))).scalars())


@asynccontextmanager
async def _as_each_clinic(
    session: AsyncSession,
) -> AsyncIterator[Callable[[uuid.UUID], Awaitable[None]]]:
    """Yield ``enter(clinic)``, which makes ``clinic``'s rows visible on PostgreSQL (a
    no-op on SQLite); the caller's ``app.clinic_id`` is restored on the way out."""
    postgres = session.get_bind().dialect.name == "postgresql"
    previous: str | None = None
    if postgres:
        previous = (
            await session.execute(select(func.current_setting(_CLINIC_SETTING, True)))
        ).scalar_one()

    async def enter(clinic: uuid.UUID) -> None:
        if postgres:
            await session.execute(select(func.set_config(_CLINIC_SETTING, str(clinic), True)))

    yield enter
    if postgres:
        await session.execute(select(func.set_config(_CLINIC_SETTING, previous or "", True)))


def _check(
    fields: dict[str, Any], expected_seq: int, prev_hash: str
) -> tuple[int | None, str] | None:
    """Why the row at ``expected_seq`` of a chain is bad, as (seq to name, reason), or None."""
    seq = fields["seq"]
    if seq is None:
        return None, "row without a seq: inserted outside the chain"
    if seq < expected_seq:
        return seq, f"duplicate seq {seq}: a row was inserted"
    if seq > expected_seq:
        return expected_seq, f"seq {expected_seq} is missing (next is {seq}): a row was deleted"
    if fields["row_hash"] != row_hash(fields):
        return seq, "row_hash does not match the row: edited, forged or reordered"
    if fields["prev_hash"] != prev_hash:
        return seq, f"prev_hash does not link to seq {seq - 1}: a row was inserted or reordered"
    return None


async def _walk(
    session: AsyncSession, clinic_id: uuid.UUID, lane: int, anchored: _Anchored | None = None
) -> tuple[int, BadRow | None]:
    """Walk one lane; with ``anchored``, compare the anchored seq's hash as the walk passes
    it, so checking an anchor costs no second scan."""
    statement = (
        select(*_COLUMNS)
        .where(AuditEvent.clinic_id == clinic_id, AuditEvent.lane == lane)
        .order_by(AuditEvent.seq.asc().nulls_last(), AuditEvent.id)
        .execution_options(yield_per=_STREAM_BATCH)
    )
    checked = 0
    expected_seq = 1
    prev_hash = GENESIS_HASH
    result = await session.stream(statement)
    try:
        async for row in result:
            checked += 1
            fields = dict(row._mapping)
            problem = _check(fields, expected_seq, prev_hash)
            if problem is None and anchored is not None and expected_seq == anchored.seq:
                problem = anchored.compare(fields["row_hash"])
            if problem is not None:
                return checked, BadRow(clinic_id, problem[0], problem[1], lane)
            prev_hash = fields["row_hash"]
            expected_seq += 1
    finally:
        await result.close()
    if anchored is not None and expected_seq <= anchored.seq:
        return checked, BadRow(clinic_id, anchored.seq, anchored.missing(), lane)
    return checked, None


@dataclass(frozen=True, slots=True)
class _Anchored:
    """One lane's anchored head, and the words to report it with."""

    seq: int
    row_hash: str
    taken_at: dt.datetime

    def compare(self, found: str | None) -> tuple[int, str] | None:
        if found == self.row_hash:
            return None
        # The row passed the chain checks, so every hash up to it was recomputed.
        when = self.taken_at.isoformat(timespec="seconds")
        return self.seq, (
            f"row_hash differs from the anchor taken at {when}: the chain was rewritten"
        )

    def missing(self) -> str:
        # The walk was gapless from seq 1 yet ended early: only the end can have gone.
        when = self.taken_at.isoformat(timespec="seconds")
        return (
            f"seq {self.seq}, anchored at {when}, is missing: "
            "rows were deleted from the end of the chain"
        )


async def _lanes(session: AsyncSession, clinic_id: uuid.UUID) -> list[int]:
    stmt = select(AuditEvent.lane).where(AuditEvent.clinic_id == clinic_id).distinct()
    return sorted((await session.execute(stmt)).scalars())


async def verify(
    session: AsyncSession, clinic_id: uuid.UUID | None = None, anchor: Anchor | None = None
) -> VerifyResult:
    """Walk each clinic's chains (or only ``clinic_id``'s) in ``seq`` order and stop at the
    first broken row: edited, deleted, inserted or reordered.

    With ``anchor``, every anchored (clinic, lane) among the clinics verified must still
    reach the anchored ``seq`` (else rows were deleted from its end; a lane with no rows
    left counts too) with the anchored ``row_hash`` there (else the chain was rewritten and
    its hashes recomputed). Rows appended after the anchor are fine. Verifying every clinic
    also covers anchored clinics no longer in ``clinics``, so deleting a whole clinic's
    trail is caught.

    Read-only. The session needs to see every row it verifies: the owner (or any role with
    SELECT) without a scope walks every clinic in ``clinics``; on PostgreSQL the row-level
    security setting is switched per clinic for the walk and restored afterwards, so a
    non-superuser owner under ``FORCE ROW LEVEL SECURITY`` sees each chain too. Under a clinic
    scope only that clinic's chain is verified.
    """
    clinics = await _clinics(session, clinic_id)
    anchored: dict[uuid.UUID, dict[int, _Anchored]] = {}
    if anchor is not None:
        for (clinic, lane), (seq, hashed) in anchor.heads.items():
            anchored.setdefault(clinic, {})[lane] = _Anchored(seq, hashed, anchor.taken_at)
        if clinic_id is None and current_scope() is None:
            # A clinic whose rows *and* clinics row were deleted is no longer listed.
            listed = set(clinics)
            clinics += sorted(clinic for clinic in anchored if clinic not in listed)
    checked = 0
    first_bad: BadRow | None = None
    async with _as_each_clinic(session) as enter:
        for clinic in clinics:
            await enter(clinic)
            heads = anchored.get(clinic, {})
            for lane in sorted(set(await _lanes(session, clinic)) | set(heads)):
                count, first_bad = await _walk(session, clinic, lane, heads.get(lane))
                checked += count
                if first_bad is not None:
                    break
            if first_bad is not None:
                break
    return VerifyResult(ok=first_bad is None, checked=checked, first_bad=first_bad)


async def take_anchor(session: AsyncSession) -> Anchor:
    """The head (newest ``seq`` and its ``row_hash``) of every (clinic, lane) chain, now.

    Sees what :func:`verify` sees: every clinic for the owner without a scope (switching
    the row-level security setting per clinic on PostgreSQL), only the scope's clinic under
    one. One grouped query per clinic. Verify before anchoring: an anchor of a broken chain
    faithfully records the breakage. Keep the result outside the database (``to_json``).
    """
    taken_at = dt.datetime.now(dt.UTC)
    heads: dict[LaneKey, Head] = {}
    async with _as_each_clinic(session) as enter:
        for clinic in await _clinics(session, None):
            await enter(clinic)
            for lane, seq, hashed in await _heads(session, clinic):
                if hashed is None:
                    raise InvalidInput(
                        f"audit clinic {clinic} lane {lane}: the row at seq {seq} has no "
                        "row_hash; run verify, the chain is broken"
                    )
                heads[(clinic, int(lane))] = (int(seq), str(hashed))
    return Anchor(taken_at=taken_at, heads=heads)


async def _heads(session: AsyncSession, clinic: uuid.UUID) -> Sequence[Any]:
    """(lane, seq, row_hash) of the max-seq row of each of ``clinic``'s lanes."""
    chained = and_(AuditEvent.clinic_id == clinic, AuditEvent.seq.is_not(None))
    newest = (
        select(AuditEvent.lane, func.max(AuditEvent.seq).label("seq"))
        .where(chained)
        .group_by(AuditEvent.lane)
        .subquery()
    )
    statement = (
        select(AuditEvent.lane, AuditEvent.seq, AuditEvent.row_hash)
        .join(newest, and_(AuditEvent.lane == newest.c.lane, AuditEvent.seq == newest.c.seq))
        .where(chained)
        .order_by(AuditEvent.lane, AuditEvent.id)
    )
    return (await session.execute(statement)).all()
