"""The unit of work of a command (:mod:`healthdb.command`): a write without the ORM.

On PostgreSQL, four round trips on the driver pool: ``BEGIN`` with the clinic setting and
the try-lock of an audit lane (as ORM writes claim theirs); the ``UPDATE … RETURNING``;
the write's audit rows (the row as returned, read; the update, with the PHI fields it
changed), chained on the claimed lane; ``COMMIT``. The audit rows commit with the write or
not at all. Then the cache tags of the table are invalidated, as after any committed write.
On SQLite (no driver pool) the command's ORM fallback runs through the ordinary unit of
work, and its entity is returned as the command's record.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from healthdb.cache import table_tag
from healthdb.command import Change, arguments
from healthdb.context import ClinicScope
from healthdb.driver_pool import DriverPool
from healthdb.errors import ClinicContextRequired, ConflictError, NotFound
from healthdb.internal.audit.append import fill_rows
from healthdb.internal.audit.flush import append_on_lane
from healthdb.internal.audit.lanes import claim_lane, release_lane, remember_head
from healthdb.internal.rls import CLINIC_SETTING
from healthdb.query.pipeline import Call
from healthdb.query.read_unit import convert

__all__ = ["write_unit"]

R = TypeVar("R")
OnCommit = Callable[[set[str]], Awaitable[None]]
RunFallback = Callable[[Change[Any]], Awaitable[Any]]


async def write_unit(
    change: Change[R],
    call: Call,
    *,
    engine: AsyncEngine,
    driver: DriverPool | None,
    audit_lanes: int,
    on_commit: OnCommit,
    run_fallback: RunFallback,
) -> R:
    """Run ``change`` for ``call``; return the row as the command's view reads it."""
    scope = call.scope
    if scope is None:
        raise ClinicContextRequired(f"{change.command.name} needs a clinic scope")
    view = change.command.view
    if driver is None:
        entity = await run_fallback(change)
        return view.record(*(getattr(entity, name) for name in view.field_names))
    command = change.command
    values = command.values(change.changes)
    prepared = command.prepared(
        engine.dialect, frozenset(values), change.expected_version is not None
    )
    args = arguments(prepared, change, scope.clinic_id, values)
    claim = claim_lane(scope.clinic_id, audit_lanes)
    order = [(claim.lane + i) % audit_lanes for i in range(audit_lanes)]
    begin = _begin(scope.clinic_id, claim.sql)
    pool_key = id(driver)
    try:
        async with driver.transaction(begin) as conn:
            row = await conn.fetchrow(prepared.sql, *args)
            if row is None:
                await _missing(conn, change, scope)
            converted = convert([row], view.compiled(engine.dialect).results, view, scope)
            audit = fill_rows([*view.accesses(converted, scope), _update(change, scope)])
            lane = await append_on_lane(conn, pool_key, scope.clinic_id, claim.lane, audit, order)
    finally:
        release_lane(claim)
    last = audit[-1]
    remember_head(pool_key, scope.clinic_id, lane, last["seq"], last["row_hash"])
    await on_commit({table_tag(command.table.name, scope.clinic_id)})
    return view.records(converted, scope)[0]


def _begin(clinic_id: uuid.UUID, lane_sql: str | None) -> str:
    # Inline text (simple protocol, one round trip): a validated uuid.UUID and the lane
    # claim's own SQL (ints and constants only).
    if not isinstance(clinic_id, uuid.UUID):
        raise TypeError("clinic_id must be a uuid.UUID")
    prelude = f"set_config('{CLINIC_SETTING}', '{clinic_id}', true)"
    return f"BEGIN; SELECT {prelude}{', ' + lane_sql if lane_sql else ''};"


async def _missing(conn: Any, change: Change[Any], scope: ClinicScope) -> None:
    """The update matched no row: a version conflict if the row is there, else NotFound."""
    table = change.command.table
    name = change.command.name
    found = await conn.fetchval(
        f'SELECT version FROM "{table.name}" WHERE id = $1 AND clinic_id = $2'  # noqa: S608
        + (" AND deleted_at IS NULL" if "deleted_at" in table.c else ""),
        change.key,
        scope.clinic_id,
    )
    if found is None:
        raise NotFound(f"{name}: no such row")
    raise ConflictError(f"{name}: the row was modified by someone else")


def _update(change: Change[Any], scope: ClinicScope) -> dict[str, Any]:
    return {
        "clinic_id": scope.clinic_id,
        "actor_id": scope.actor,
        "actor_role": scope.role.value,
        "purpose": scope.purpose[:64],
        "outcome": "success",
        "request_id": scope.request_id[:64],
        "client_addr": scope.client_addr,
        "action": "phi.update",
        "resource_type": str(change.command.table.name),
        "resource_id": str(change.key),
        "phi_fields": change.command.changed_phi(change.changes),
    }
