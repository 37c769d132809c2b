"""Appending to a clinic's audit chain inside the caller's transaction (SQLAlchemy).

:func:`append` gives a new event the next ``seq`` of its clinic's lane (1, 2, 3, ...), links
it to the previous row of that lane (``prev_hash``: that row's ``row_hash``, or 64 zeros for
the first) and seals it (:mod:`.chain`). Writes use this path: a PHI write and its audit row
commit together. Reads go through the group-commit writer (:mod:`.writer`) instead.

Appends to one lane are serialised inside the caller's write transaction: on PostgreSQL by
``pg_advisory_xact_lock`` on a key derived from the clinic id and lane (released at commit
or rollback); an append takes the first free lane, so up to ``lanes`` transactions of one
clinic audit at once. On SQLite the database write lock, which the facade's write
transactions take up front (``BEGIN IMMEDIATE``), serialises everything and one lane is
used. The database itself refuses UPDATE and DELETE on ``audit_events`` (migration 0003),
and a unique index on ``(clinic_id, lane, seq)`` backs the sequence.

The facade's units that always audit claim their lane in the statement that begins the
transaction (:func:`~.lanes.claim_lane`, sent with ``BEGIN``); the append then reads that
lane's head in a later statement (a fresh READ COMMITTED snapshot, taken after the lock),
or, for one row, chains it onto the head this process remembers and inserts it with a guard
that inserts nothing unless the lane is locked by this transaction and that head is still
the newest row (then it falls back to reading the head). Either way ``seq`` and
``prev_hash`` come from the lane's real newest row, under its lock.

What a chain cannot prove: that its newest rows were not deleted (the rest is still a valid
chain), nor that someone who can rewrite the table *and* recompute every hash after the
tampered row (the database owner, with the trigger disabled) did not forge a consistent
chain. An anchor of the chain heads kept outside the database
(:func:`healthdb.internal.audit_verify.take_anchor`, ``healthdb audit anchor``) closes both
gaps for every row up to the anchored heads.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Sequence
from typing import Any, cast

import orjson
from sqlalchemy import (
    BigInteger,
    String,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from healthdb.context import current_scope
from healthdb.errors import ClinicContextRequired, InvalidInput
from healthdb.execution_options import TRUSTED
from healthdb.internal.audit.chain import GENESIS_HASH, SEALED, clinic_lock_key, row_hash
from healthdb.internal.audit.lanes import (
    LANE_SETTING,
    LaneClaim,
    remember_head,
    remembered_head,
)
from healthdb.models import AuditEvent
from healthdb.models.base import new_id, new_ids, utcnow

__all__ = [
    "EVENTS",
    "JSON_INSERT",
    "RECORD_COLUMNS",
    "append",
    "append_many",
    "append_rows",
    "fill_rows",
    "insert_json",
    "rows_json",
]

#: From this many rows on, an append goes in as one ``JSON_INSERT`` on the driver.
JSON_THRESHOLD = 2


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
    claimed: LaneClaim | None = None,
) -> None:
    """Chain and insert audit rows given as column mappings (``clinic_id``, ``action``,
    ``resource_type`` and any other unsealed column): the fast path for many rows at once,
    one multi-row INSERT instead of one ORM object per row.

    ``claimed``: the lane this transaction already tried to lock with :func:`claim_lane`
    when it began (PostgreSQL). The lane and its chain head are then read in one statement,
    or, for a single row whose lane head this process remembers, not read at all: the row is
    chained onto the remembered head and inserted only if the database confirms, in the same
    statement, that the lane is this transaction's and that head is still the newest row."""
    filled = fill_rows(rows)
    conn = await session.connection()
    hint = claimed if conn.dialect.name == "postgresql" else None
    if hint is not None and hint.sql is None:  # a shared lane: queue for it now
        key = clinic_lock_key(hint.clinic_id, hint.lane)
        await conn.execute(_WAIT_AND_NOTE, {"key": key, "lane": str(hint.lane)})
    single = len(filled) == 1 and filled[0]["clinic_id"] == (hint and hint.clinic_id)
    if hint is not None and single and await _append_on_hint(conn, filled[0], hint):
        return
    await _chain(conn, filled, lanes, claimed)
    # The rows are the library's own, stamped with their clinic above; row-level security
    # still checks every one (WITH CHECK).
    if conn.dialect.name != "postgresql":
        await conn.execute(_INSERT, filled)  # Core, on the session's connection
        return
    if len(filled) >= JSON_THRESHOLD:  # one statement, no per-row parameter processing
        raw = await conn.get_raw_connection()
        await insert_json(raw.driver_connection, filled)
    else:
        await conn.execute(_INSERT, filled)
    _remember(conn, filled)


def fill_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Complete unsealed audit rows: defaults, an id, and an ``occurred_at`` strictly
    increasing within the call, so time orders a unit's rows as they happened."""
    ids = iter(new_ids(sum(1 for row in rows if not row.get("id"))))
    filled = [{**_DEFAULTS, **row, "id": row.get("id") or next(ids)} for row in rows]
    previous: dt.datetime | None = None
    now = utcnow()  # once: the rows of one call happen together, ordered by the ticks below
    for row in filled:
        if row.get("clinic_id") is None:
            raise ClinicContextRequired("an audit row needs a clinic_id")
        stamp = row.get("occurred_at") or now
        if previous is not None and stamp <= previous:
            stamp = previous + _TICK
        row["occurred_at"] = previous = stamp
    return filled


# (column, its type in the recordset): every column of audit_events, in order.
RECORD_COLUMNS = (
    ("id", "uuid"),
    ("clinic_id", "uuid"),
    ("lane", "smallint"),
    ("seq", "bigint"),
    ("occurred_at", "timestamptz"),
    ("actor_id", "uuid"),
    ("actor_role", "text"),
    ("action", "text"),
    ("resource_type", "text"),
    ("resource_id", "text"),
    ("phi_fields", "json"),
    ("purpose", "text"),
    ("outcome", "text"),
    ("request_id", "text"),
    ("client_addr", "text"),
    ("reason", "text"),
    ("prev_hash", "text"),
    ("row_hash", "text"),
)
_RECORD_NAMES = ", ".join(name for name, _ in RECORD_COLUMNS)
_RECORD_TYPES = ", ".join(f"{name} {kind}" for name, kind in RECORD_COLUMNS)
#: Every row in one parameter: a JSON array of objects (:func:`rows_json`). Encoding one
#: text costs the client a fraction of what one array per column did (measured: 18 arrays
#: of 50 rows cost ~400 us of client CPU to encode; the JSON document ~60 us).
JSON_INSERT = (
    f"INSERT INTO audit_events ({_RECORD_NAMES}) "  # noqa: S608 (constants only)
    f"SELECT {_RECORD_NAMES} FROM json_to_recordset($1::text::json) AS r({_RECORD_TYPES})"
)


async def insert_json(driver: Any, rows: list[dict[str, Any]]) -> None:
    """Insert sealed rows in one statement on an asyncpg connection (PostgreSQL)."""
    await driver.execute(JSON_INSERT, rows_json(rows))


def rows_json(rows: list[dict[str, Any]]) -> str:
    """The argument of :data:`JSON_INSERT`: the rows as a JSON array (uuids as strings,
    timestamps in RFC 3339, ``phi_fields`` as a JSON array)."""
    return orjson.dumps(rows, default=_uuid_text, option=orjson.OPT_NAIVE_UTC).decode()


def _uuid_text(value: Any) -> str:
    # orjson writes uuid.UUID itself, not the driver's own uuid type (asyncpg's, which ids
    # read from the database are): any uuid as its canonical text, anything else refused.
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"an audit row cannot hold a {type(value).__name__}")


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

EVENTS = cast(Table, AuditEvent.__table__)
_EVENTS = EVENTS
# The chain's statements run on the session's connection with the clinic written out (and
# row-level security checking it on PostgreSQL): TRUSTED tells the connection wall so.
_INSERT = insert(_EVENTS).execution_options(**TRUSTED)
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
    .execution_options(**TRUSTED)
)

#: The lane :func:`claim_lane` locked, with its chain head, in one statement. The head is
#: read by a later statement than the one that took the lock, so (READ COMMITTED) its
#: snapshot includes every append committed by the lane's previous holders.
_CLAIMED_HEAD = text(
    "SELECT s.lane, h.seq, h.row_hash FROM "  # noqa: S608 (constants only)
    f"(SELECT CAST(NULLIF(current_setting('{LANE_SETTING}', true), '') AS integer) AS lane) s "
    "LEFT JOIN LATERAL (SELECT a.seq, a.row_hash FROM audit_events a "
    "WHERE a.clinic_id = :clinic_id AND a.lane = s.lane AND a.seq IS NOT NULL "
    "ORDER BY a.seq DESC LIMIT 1) h ON true"
).execution_options(**TRUSTED)


def _remember(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Note the newest row this transaction appended to each lane."""
    for row in rows:  # in chain order: the last row of a lane wins
        remember_head(
            id(conn.sync_engine), row["clinic_id"], row["lane"], row["seq"], row["row_hash"]
        )


async def _append_on_hint(conn: AsyncConnection, row: dict[str, Any], claim: LaneClaim) -> bool:
    """Chain ``row`` onto the remembered head of the claimed lane and insert it, in one
    statement that inserts nothing unless this transaction holds that lane
    (:data:`LANE_SETTING`) and the remembered row is still the lane's newest. The statement
    runs after the lock was taken, so (READ COMMITTED) it sees every earlier holder's rows.
    True when the row was inserted."""
    engine = id(conn.sync_engine)
    head = remembered_head(engine, claim.clinic_id, claim.lane)
    if head is None:
        return False
    seq, prev = head
    row["lane"] = claim.lane
    row["seq"] = seq + 1
    row["prev_hash"] = prev
    row["row_hash"] = row_hash(row)
    params = {**row, "lane_text": str(claim.lane), "prev_seq": seq}
    inserted = (await conn.execute(_GUARDED_INSERT, params)).rowcount == 1
    if inserted:
        remember_head(engine, claim.clinic_id, claim.lane, row["seq"], row["row_hash"])
    # Else the hint is kept: most misses are another lane taken, not a stale head, and the
    # fallback re-notes the head of whichever lane it appends to.
    return inserted


def _guarded_insert() -> Any:
    columns = [c.name for c in _EVENTS.columns]
    values = [bindparam(name, type_=_EVENTS.c[name].type) for name in columns]
    other = _EVENTS.alias("newest")
    same_lane = and_(
        other.c.clinic_id == bindparam("clinic_id", type_=_EVENTS.c.clinic_id.type),
        other.c.lane == bindparam("lane", type_=_EVENTS.c.lane.type),
    )
    prev_seq = bindparam("prev_seq", type_=_EVENTS.c.seq.type)

    def newest(column: Any) -> Any:
        # One backward scan of the (clinic_id, lane, seq) index, a shape a prepared
        # statement's generic plan keeps (a NOT EXISTS on seq > :prev_seq was planned as a
        # scan of the clinic's every row: ~20 ms per write).
        stmt = select(column).where(same_lane, other.c.seq.is_not(None))
        return stmt.order_by(other.c.seq.desc()).limit(1).scalar_subquery()

    guard = and_(
        func.current_setting(LANE_SETTING, True) == bindparam("lane_text", type_=String),
        func.coalesce(newest(other.c.seq), 0) == prev_seq,
        or_(
            prev_seq == 0,
            newest(other.c.row_hash) == bindparam("prev_hash", type_=_EVENTS.c.prev_hash.type),
        ),
    )
    return insert(_EVENTS).from_select(columns, select(*values).where(guard))


_GUARDED_INSERT = _guarded_insert().execution_options(**TRUSTED)


async def _chain(
    conn: AsyncConnection, rows: list[dict[str, Any]], lanes: int, claimed: LaneClaim | None
) -> None:
    """Give each row its lane, ``seq``, ``prev_hash`` and ``row_hash``, in order."""
    by_clinic: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for row in rows:
        by_clinic.setdefault(row["clinic_id"], []).append(row)
    postgres = conn.dialect.name == "postgresql"
    for clinic_id, chain in by_clinic.items():
        last: Any = None
        lane: int | None = None
        if postgres and claimed is not None and clinic_id == claimed.clinic_id:
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
_WAIT_AND_NOTE = select(
    func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger)),
    func.set_config(LANE_SETTING, bindparam("lane", type_=String), True),
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
