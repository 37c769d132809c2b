"""The audit hash chain: append events to a clinic's chain.

Each clinic has its own chain, split into *lanes* (independent sub-chains, migration
0005). :func:`append` gives a new event the next ``seq`` of its clinic's lane (1, 2, 3,
...), links it to the previous row of that lane (``prev_hash``: that row's ``row_hash``, or
64 zeros for the first) and seals it: ``row_hash`` is the sha256 of the canonical JSON of
every column except ``row_hash`` and ``lane`` (``seq`` and ``prev_hash`` included). Editing,
deleting, inserting, reordering or moving rows between lanes therefore breaks a chain, and
:func:`healthdb.internal.audit_verify.verify` names the first broken row and its lane.

Appends to one lane are serialised inside the caller's write transaction: on PostgreSQL by
``pg_advisory_xact_lock`` on a key derived from the clinic id and lane (released at commit
or rollback); an append takes the first free lane, so up to ``lanes`` transactions of one
clinic audit at once. On SQLite the database write lock, which the facade's write
transactions take up front (``BEGIN IMMEDIATE``), serialises everything and one lane is
used. The database itself refuses UPDATE and DELETE on ``audit_events`` (migration 0003),
and a unique index on ``(clinic_id, lane, seq)`` backs the sequence.

What a chain cannot prove: that its newest rows were not deleted (the rest is still a valid
chain), nor that someone who can rewrite the table *and* recompute every hash after the
tampered row (the database owner, with the trigger disabled) did not forge a consistent
chain. An anchor of the chain heads kept outside the database
(:func:`healthdb.internal.audit_verify.take_anchor`, ``healthdb audit anchor``) closes both
gaps for every row up to the anchored heads.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import secrets
import uuid
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import BigInteger, Table, bindparam, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from healthdb.context import current_scope
from healthdb.errors import ClinicContextRequired, InvalidInput
from healthdb.models import AuditEvent
from healthdb.models.base import new_id, utcnow

__all__ = [
    "GENESIS_HASH",
    "SEALED",
    "append",
    "append_many",
    "append_rows",
    "claim_lane",
    "clinic_lock_key",
    "row_hash",
]

GENESIS_HASH = "0" * 64
_LOCK_NAMESPACE = b"healthdb.audit.chain:"

#: Every column that is sealed, in a fixed order (``row_hash`` is the seal itself).
SEALED = (
    "id",
    "clinic_id",
    "seq",
    "occurred_at",
    "actor_id",
    "actor_role",
    "action",
    "resource_type",
    "resource_id",
    "phi_fields",
    "purpose",
    "outcome",
    "request_id",
    "client_addr",
    "reason",
    "prev_hash",
)


def clinic_lock_key(clinic_id: uuid.UUID, lane: int = 0) -> int:
    """The signed 64-bit ``pg_advisory_xact_lock`` key of one lane of a clinic's chain
    (namespaced, so it cannot collide with other advisory locks keyed on the same uuid)."""
    suffix = b"" if lane == 0 else b":" + str(lane).encode()
    digest = hashlib.sha256(_LOCK_NAMESPACE + clinic_id.bytes + suffix).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _canonical(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime in an audit event: pass a timezone-aware value")
        return value.astimezone(dt.UTC).isoformat(timespec="microseconds")
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value


def row_hash(fields: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of the sealed fields: sorted keys, no whitespace,
    uuids as strings, timestamps as UTC ISO 8601 with microseconds."""
    document = {name: _canonical(fields.get(name)) for name in SEALED}
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


async def append(session: AsyncSession, event: AuditEvent) -> AuditEvent:
    """Chain ``event`` onto its clinic's audit trail and flush it, in the caller's transaction.

    The clinic is ``event.clinic_id`` or, when unset, the current scope's. Missing defaults
    (``id``, ``occurred_at``, ``phi_fields``, ``outcome``) are filled in first, since they are
    sealed. Call it in a write transaction (SQLite: ``BEGIN IMMEDIATE``, as the facade's
    writes are), so that concurrent appends to one clinic queue instead of colliding.
    """
    (sealed,) = await append_many(session, [event])
    return sealed


def _prepare(event: AuditEvent) -> uuid.UUID:
    if event.clinic_id is None:
        scope = current_scope()
        if scope is None:
            raise ClinicContextRequired("an audit event needs a clinic: set clinic_id or a scope")
        event.clinic_id = scope.clinic_id
    if event.seq is not None or event.prev_hash is not None or event.row_hash is not None:
        raise InvalidInput("seq, prev_hash and row_hash are assigned by the audit chain")
    if event.id is None:
        event.id = new_id()
    if event.occurred_at is None:
        event.occurred_at = utcnow()
    if event.phi_fields is None:
        event.phi_fields = []
    if event.outcome is None:
        event.outcome = "success"
    return event.clinic_id


async def append_many(
    session: AsyncSession, events: Sequence[AuditEvent], *, lanes: int = 1
) -> list[AuditEvent]:
    """:func:`append` for several events: one lock and one chain-head read per clinic.

    With ``lanes`` > 1 (PostgreSQL), a clinic's events go to the first of its ``lanes``
    chains whose lock is free (tried from a random lane, waiting only when all are busy), so
    concurrent transactions of one clinic do not queue behind one lock held until COMMIT.
    """
    for event in events:
        _prepare(event)
    fields = [{name: getattr(event, name) for name in SEALED} for event in events]
    await _chain(await session.connection(), fields, lanes, None)
    for event, sealed in zip(events, fields, strict=True):
        for name in ("lane", "seq", "prev_hash", "row_hash"):
            setattr(event, name, sealed[name])
    session.add_all(events)
    await session.flush()
    return list(events)


async def append_rows(
    session: AsyncSession,
    rows: Sequence[dict[str, Any]],
    *,
    lanes: int = 1,
    claimed: uuid.UUID | None = None,
) -> None:
    """Chain and insert audit rows given as column mappings (``clinic_id``, ``action``,
    ``resource_type`` and any other unsealed column): the fast path for many rows at once,
    one multi-row INSERT instead of one ORM object per row.

    ``claimed``: the clinic whose lane this transaction already locked with
    :func:`claim_lane` when it began (PostgreSQL); its lane and chain head are then read in
    one statement."""
    filled = [{**_DEFAULTS, **row, "id": row.get("id") or new_id()} for row in rows]
    previous: dt.datetime | None = None
    for row in filled:
        if row.get("clinic_id") is None:
            raise ClinicContextRequired("an audit row needs a clinic_id")
        # Strictly increasing within the call, so time orders a unit's rows as they happened.
        stamp = row.get("occurred_at") or utcnow()
        if previous is not None and stamp <= previous:
            stamp = previous + _TICK
        row["occurred_at"] = previous = stamp
    conn = await session.connection()
    await _chain(conn, filled, lanes, claimed)
    # Core, on the session's connection: the rows are the library's own, stamped with their
    # clinic above; row-level security still checks every one (WITH CHECK).
    await conn.execute(_INSERT, filled)


_TICK = dt.timedelta(microseconds=1)
_DEFAULTS: dict[str, Any] = {
    "actor_id": None,
    "actor_role": None,
    "resource_id": None,
    "phi_fields": [],
    "purpose": None,
    "outcome": "success",
    "request_id": None,
    "client_addr": None,
    "reason": None,
    "seq": None,
    "prev_hash": None,
}

_EVENTS = cast(Table, AuditEvent.__table__)
_INSERT = insert(_EVENTS)
#: The head of one lane: built once, so every append reuses SQLAlchemy's compiled form.
_HEAD = (
    select(_EVENTS.c.seq, _EVENTS.c.row_hash)
    .where(
        _EVENTS.c.clinic_id == bindparam("clinic_id"),
        _EVENTS.c.lane == bindparam("lane"),
        _EVENTS.c.seq.is_not(None),
    )
    .order_by(_EVENTS.c.seq.desc())
    .limit(1)
)

#: The transaction-local setting in which :func:`claim_lane` leaves the lane it locked
#: ('' when every lane was busy).
LANE_SETTING = "healthdb.audit_lane"

#: The lane :func:`claim_lane` locked, with its chain head, in one statement. The head is
#: read by a later statement than the one that took the lock, so (READ COMMITTED) its
#: snapshot includes every append committed by the lane's previous holders.
_CLAIMED_HEAD = text(
    "SELECT s.lane, h.seq, h.row_hash FROM "  # noqa: S608 (constants only)
    f"(SELECT CAST(NULLIF(current_setting('{LANE_SETTING}', true), '') AS integer) AS lane) s "
    "LEFT JOIN LATERAL (SELECT a.seq, a.row_hash FROM audit_events a "
    "WHERE a.clinic_id = :clinic_id AND a.lane = s.lane AND a.seq IS NOT NULL "
    "ORDER BY a.seq DESC LIMIT 1) h ON true"
)


def claim_lane(clinic_id: uuid.UUID, lanes: int) -> str:
    """A select-list item for the statement that begins a transaction (PostgreSQL): lock the
    first free lane of the clinic's chain, tried from a random lane, and leave its number in
    :data:`LANE_SETTING` for :func:`append_rows` (``claimed=clinic_id``). Nothing waits here:
    when every lane is busy the setting is '' and the append queues on one lane itself.

    The text is rendered inline (it travels with ``BEGIN`` in the simple protocol): it holds
    only Python ints and constants."""
    if not isinstance(clinic_id, uuid.UUID) or not 1 <= lanes <= 64:
        raise InvalidInput("claim_lane needs a clinic uuid and 1-64 lanes")
    return _claim_text(clinic_id, lanes, secrets.randbelow(lanes))


@functools.lru_cache(maxsize=8192)
def _claim_text(clinic_id: uuid.UUID, lanes: int, start: int) -> str:
    # Cached: eight sha256 lock keys per call cost more than the rest of the prelude.
    order = [(start + i) % lanes for i in range(lanes)]
    keys = ",".join(str(clinic_lock_key(clinic_id, lane)) for lane in order)
    numbers = ",".join(str(lane) for lane in order)
    return (
        f"set_config('{LANE_SETTING}', COALESCE((SELECT k.lane::text FROM "  # noqa: S608
        f"unnest('{{{keys}}}'::bigint[], '{{{numbers}}}'::integer[]) AS k(key, lane) "
        "WHERE pg_try_advisory_xact_lock(k.key) LIMIT 1), ''), true)"
    )


async def _chain(
    conn: AsyncConnection, rows: list[dict[str, Any]], lanes: int, claimed: uuid.UUID | None
) -> None:
    """Give each row its lane, ``seq``, ``prev_hash`` and ``row_hash``, in order."""
    by_clinic: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for row in rows:
        by_clinic.setdefault(row["clinic_id"], []).append(row)
    postgres = conn.dialect.name == "postgresql"
    for clinic_id, chain in by_clinic.items():
        last: Any = None
        lane: int | None = None
        if postgres and clinic_id == claimed:
            found = (await conn.execute(_CLAIMED_HEAD, {"clinic_id": clinic_id})).one()
            lane = found.lane
            last = found if found.seq is not None else None
        if lane is None:
            lane = await _lock_lane(conn, clinic_id, lanes) if postgres else 0
            last = (await conn.execute(_HEAD, {"clinic_id": clinic_id, "lane": lane})).first()
        seq = 0 if last is None else int(last.seq)
        prev = GENESIS_HASH if last is None else (last.row_hash or GENESIS_HASH)
        for row in chain:
            seq += 1
            row["lane"] = lane
            row["seq"] = seq
            row["prev_hash"] = prev
            row["row_hash"] = prev = row_hash(row)


_TRY_LANES = text(
    "SELECT k.i FROM unnest(CAST(:keys AS bigint[])) WITH ORDINALITY AS k(key, i) "
    "WHERE pg_try_advisory_xact_lock(k.key) LIMIT 1"
)
_WAIT_LANE = select(func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger)))


async def _lock_lane(conn: AsyncConnection, clinic_id: uuid.UUID, lanes: int) -> int:
    """Lock one lane of the clinic's chain for this transaction and return it."""
    start = secrets.randbelow(lanes) if lanes > 1 else 0
    order = [(start + i) % lanes for i in range(lanes)]
    if lanes > 1:
        keys = [clinic_lock_key(clinic_id, lane) for lane in order]
        free = (await conn.execute(_TRY_LANES, {"keys": keys})).scalar()
        if free is not None:
            return order[int(free) - 1]
    # Every lane busy (or one lane): queue on the first, as a single chain always did.
    await conn.execute(_WAIT_LANE, {"key": clinic_lock_key(clinic_id, start)})
    return start
