"""The unit of work of a command (:mod:`healthdb.command`): a write without the ORM.

On PostgreSQL, on the driver pool: ``BEGIN`` with the clinic setting and the try-lock of
an audit lane (as ORM writes claim theirs), in one message; the command's statements; its
audit rows, chained on the claimed lane; ``COMMIT``. The audit rows commit with the write
or not at all. Then the outcome's cache tags are invalidated, as after any committed write.
On SQLite (no driver pool) the command's ORM fallback runs through the ordinary unit of
work, and its entity is returned as the command's result.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from healthdb.command import Command
from healthdb.driver_pool import DriverPool
from healthdb.errors import ClinicContextRequired
from healthdb.internal.audit.append import fill_rows
from healthdb.internal.audit.flush import append_on_lane
from healthdb.internal.audit.lanes import LaneClaim, claim_lane, release_lane, remember_head
from healthdb.internal.rls import CLINIC_SETTING
from healthdb.query.pipeline import Call

__all__ = ["write_unit"]

R = TypeVar("R")
OnCommit = Callable[[set[str]], Awaitable[None]]
RunFallback = Callable[[Command[Any]], Awaitable[Any]]


async def write_unit(
    command: Command[R],
    call: Call,
    *,
    engine: AsyncEngine,
    driver: DriverPool | None,
    audit_lanes: int,
    on_commit: OnCommit,
    run_fallback: RunFallback,
) -> R:
    """Run ``command`` for ``call``; return its result once committed."""
    scope = call.scope
    if scope is None:
        raise ClinicContextRequired(f"{command.name} needs a clinic scope")
    if driver is None:
        return command.result_of(await run_fallback(command))
    claims: list[LaneClaim] = []

    def begin() -> str:
        # Claimed once a connection is held: a unit still queued for one would only keep
        # a lane from the units that are running.
        claims.append(claim := claim_lane(scope.clinic_id, audit_lanes))
        return _begin(scope.clinic_id, claim.sql)

    pool_key = id(driver)
    try:
        async with driver.transaction(begin) as conn:
            outcome = await command.run(conn, scope, engine.dialect)
            audit = fill_rows(outcome.audit)
            lane = claims[0].lane
            if audit:
                order = [(lane + i) % audit_lanes for i in range(audit_lanes)]
                lane = await append_on_lane(conn, pool_key, scope.clinic_id, lane, audit, order)
    finally:
        for claim in claims:
            release_lane(claim)
    if audit:
        last = audit[-1]
        remember_head(pool_key, scope.clinic_id, lane, last["seq"], last["row_hash"])
    if outcome.tags:
        await on_commit(outcome.tags)
    return outcome.result


def _begin(clinic_id: uuid.UUID, lane_sql: str | None) -> str:
    # Inline text (simple protocol, one round trip): a validated uuid.UUID and the lane
    # claim's own SQL (ints and constants only).
    if not isinstance(clinic_id, uuid.UUID):
        raise TypeError("clinic_id must be a uuid.UUID")
    prelude = f"set_config('{CLINIC_SETTING}', '{clinic_id}', true)"
    return f"BEGIN; SELECT {prelude}{', ' + lane_sql if lane_sql else ''};"
