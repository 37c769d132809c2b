"""How the group-commit writer (:mod:`.writer`) gets one clinic's rows into the database.

PostgreSQL (:func:`postgres_flush`), on the driver connection, in the common case three
round trips for however many rows: ``BEGIN`` with the clinic setting and a try-lock of this
process's lane (first choice) or another free lane; one ``INSERT ... SELECT FROM
json_to_recordset(...)`` of every row, chained onto the lane head this process remembers and
guarded in the same statement (it inserts nothing unless this transaction holds that lane
and the remembered head is still the lane's newest row); ``COMMIT``. Otherwise (first flush
of a clinic in this process, another lane taken, a head moved by another process) the lane
and its head are read under the lock and the rows chained onto them. A unique index on
``(clinic_id, lane, seq)`` stands behind all of it: a flush that lost a race fails whole,
rolls back and is re-chained.

SQLite (:func:`session_flush`): a write transaction (``BEGIN IMMEDIATE``) with
:func:`~.append.append_rows` on one lane.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from healthdb.driver_pool import DriverPool
from healthdb.internal.audit.append import (
    JSON_INSERT,
    append_rows,
    fill_rows,
    insert_json,
    rows_json,
)
from healthdb.internal.audit.chain import GENESIS_HASH, lane_keys, row_hash
from healthdb.internal.audit.lanes import (
    LANE_SETTING,
    remember_head,
    remembered_head,
    reserve_lane,
    try_lanes_sql,
)
from healthdb.internal.audit.writer import Flush

__all__ = ["append_on_lane", "postgres_flush", "session_flush"]

#: Attempts of one flush that lost a race for a lane position (unique violation).
ATTEMPTS = 3

_N = 1  # the rows, as one JSON document
# Parameters after the arrays: the lane as text, the clinic, the lane, the remembered
# head's seq and hash. One init-plan, evaluated once for the whole statement.
# The lane's newest row is read by one backward scan of the (clinic_id, lane, seq) index:
# a shape the planner keeps in the generic plan of a prepared statement. (A "NOT EXISTS seq
# > $n" form was planned, generically, as a scan of the clinic's every row: 20 ms a flush.)
_NEWEST = (
    "(SELECT {col} FROM audit_events a WHERE a.clinic_id = ${clinic} AND a.lane = ${lane} "
    "AND a.seq IS NOT NULL ORDER BY a.seq DESC LIMIT 1)"
)
_GUARDED_INSERT = (
    f"{JSON_INSERT} WHERE (SELECT current_setting('{LANE_SETTING}', true) = ${_N + 1} "
    f"AND COALESCE({_NEWEST.format(col='a.seq', clinic=_N + 2, lane=_N + 3)}, 0) = ${_N + 4} "
    f"AND (${_N + 4} = 0 OR "
    f"{_NEWEST.format(col='a.row_hash', clinic=_N + 2, lane=_N + 3)} = ${_N + 5}))"
)
_LOCKED_LANE = f"SELECT NULLIF(current_setting('{LANE_SETTING}', true), '')::integer"
_WAIT_LANE = "SELECT pg_advisory_xact_lock($1)"
_HEAD = (
    "SELECT seq, row_hash FROM audit_events WHERE clinic_id = $1 AND lane = $2 "
    "AND seq IS NOT NULL ORDER BY seq DESC LIMIT 1"
)


def postgres_flush(pool: DriverPool, *, lanes: int, clinic_setting: str) -> Flush:
    """A :data:`~.writer.Flush` for PostgreSQL through ``pool``; the transaction sets
    ``clinic_setting`` (row-level security checks every row against it)."""
    mine = reserve_lane(lanes)
    order = [(mine + i) % lanes for i in range(lanes)]
    engine_key = id(pool)

    async def flush(clinic_id: uuid.UUID, rows: list[dict[str, Any]]) -> None:
        if not isinstance(clinic_id, uuid.UUID):
            raise TypeError("clinic_id must be a uuid.UUID")
        filled = fill_rows(rows)
        begin = (
            f"BEGIN; SELECT set_config('{clinic_setting}', '{clinic_id}', true), "
            f"{try_lanes_sql(clinic_id, lanes, order)};"
        )
        for attempt in range(ATTEMPTS):
            try:
                async with pool.transaction(begin) as driver:  # committed before it returns
                    lane = await append_on_lane(driver, engine_key, clinic_id, mine, filled, order)
            except asyncpg.UniqueViolationError:
                if attempt == ATTEMPTS - 1:
                    raise
                continue
            last = filled[-1]
            remember_head(engine_key, clinic_id, lane, last["seq"], last["row_hash"])
            return

    return flush


async def append_on_lane(
    driver: asyncpg.Connection,
    engine_key: int,
    clinic_id: uuid.UUID,
    mine: int,
    rows: list[dict[str, Any]],
    order: list[int],
) -> int:
    """Chain and insert filled ``rows`` (:func:`~.append.fill_rows`) in the transaction on
    ``driver``, which tried to lock lane ``mine`` (or another of ``order``) when it began:
    onto the head remembered for ``engine_key`` when the guard confirms it, else onto the
    head read under the lane lock (waiting for ``mine`` when every lane was busy). Returns
    the lane written; the caller remembers its head once the transaction has committed."""
    head = remembered_head(engine_key, clinic_id, mine)
    if head is not None:
        _seal(rows, mine, head)
        guard = (str(mine), clinic_id, mine, head[0], head[1])
        status = await driver.execute(_GUARDED_INSERT, rows_json(rows), *guard)
        if status == f"INSERT 0 {len(rows)}":
            return mine
    lane = await driver.fetchval(_LOCKED_LANE)
    if lane is None:  # every lane was busy at BEGIN: queue for this process's own
        lane = mine
        await driver.execute(_WAIT_LANE, lane_keys(clinic_id, len(order))[lane])
    found = await driver.fetchrow(_HEAD, clinic_id, lane)
    _seal(rows, lane, None if found is None else (found["seq"], found["row_hash"]))
    await insert_json(driver, rows)
    return int(lane)


def _seal(rows: list[dict[str, Any]], lane: int, head: tuple[int, str | None] | None) -> None:
    seq = 0 if head is None else int(head[0])
    prev = GENESIS_HASH if head is None else (head[1] or GENESIS_HASH)
    for row in rows:
        seq += 1
        row["lane"] = lane
        row["seq"] = seq
        row["prev_hash"] = prev
        row["row_hash"] = prev = row_hash(row)


def session_flush(sessions: async_sessionmaker[AsyncSession]) -> Flush:
    """A :data:`~.writer.Flush` through write sessions (SQLite: ``BEGIN IMMEDIATE``)."""

    async def flush(_clinic_id: uuid.UUID, rows: list[dict[str, Any]]) -> None:
        async with sessions() as session, session.begin():
            await append_rows(session, rows)

    return flush
