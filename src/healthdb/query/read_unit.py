"""The unit of work of a view read (:mod:`healthdb.view`): no session, no ORM.

On PostgreSQL the read runs on a driver connection (:mod:`healthdb.driver_pool`)
in two round trips: ``BEGIN READ ONLY`` with the clinic setting for row-level security (and
the previous reader's deferred ``COMMIT``, :mod:`healthdb.driver_pool`), then the view's
prepared ``SELECT``. Its rows are converted once (PHI the role may
not see is never decrypted), masked, and their audit rows handed to the group-commit writer;
the result is returned once those are committed. On SQLite the view runs through
SQLAlchemy's connection (there is no database wall to set up there).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine

from healthdb.context import ClinicScope
from healthdb.driver_pool import DriverPool
from healthdb.errors import InvalidInput, PhiNotCacheable, QueryTimeout
from healthdb.execution_options import TRUSTED
from healthdb.internal.audit.writer import AuditWriter
from healthdb.internal.rls import CLINIC_SETTING
from healthdb.query.options import QueryOptions, ReadStrategy
from healthdb.query.pipeline import Call
from healthdb.view import Read, View

__all__ = ["read_unit"]

T = TypeVar("T")


async def read_unit(
    read: Read[T],
    call: Call,
    *,
    engine: AsyncEngine,
    driver: DriverPool | None,
    audit_writer: AuditWriter,
) -> T:
    """Run ``read`` for ``call``: fetch, convert, mask, audit (durably), shape."""
    view = read.view
    scope = call.scope
    options = call.options
    cached = isinstance(options, QueryOptions) and options.read_strategy is ReadStrategy.CACHED
    if view.phi and cached:
        raise PhiNotCacheable(
            f"view {view.name} reads PHI; PHI reads are audited one by one and never cached"
        )
    params = view.params(read, scope)
    try:
        async with asyncio.timeout(options.timeout):
            if driver is not None:
                rows = await _fetch_driver(driver, engine.dialect, view, params, scope)
            else:
                rows = await _fetch_sqlalchemy(engine, view, params)
    except TimeoutError:
        raise QueryTimeout("the operation exceeded its time limit") from None
    disclosed, more = read.disclosed(rows)
    if driver is not None:
        disclosed = view.convert(disclosed, engine.dialect, scope)
    records = view.records(disclosed, scope)
    if view.phi and disclosed:
        assert scope is not None  # view.params refused a PHI view without one
        await audit_writer.write(view.accesses(disclosed, scope))
    return read.finish(records, more)


async def _fetch_driver(
    pool: DriverPool,
    dialect: Dialect,
    view: View[Any],
    params: dict[str, Any],
    scope: ClinicScope | None,
) -> Sequence[Any]:
    compiled = view.compiled(dialect)
    args = []
    for name in compiled.names:
        if name in params:
            value = params[name]
        elif name in compiled.defaults:
            value = compiled.defaults[name]
        else:
            raise InvalidInput(f"view {view.name} needs parameter {name!r}")
        process = compiled.binds[name]
        args.append(value if process is None else process(value))
    if scope is None:
        async with pool.connection() as driver:
            return await driver.fetch(compiled.sql, *args)  # type: ignore[no-any-return]
    # Read-only: its COMMIT travels with the next BEGIN on this connection.
    async with pool.transaction(_begin(scope.clinic_id), defer_commit=True) as driver:
        return await driver.fetch(compiled.sql, *args)  # type: ignore[no-any-return]


def _begin(clinic_id: uuid.UUID) -> str:
    # Inline text (simple protocol, one round trip): only a validated uuid.UUID goes in.
    if not isinstance(clinic_id, uuid.UUID):
        raise TypeError("clinic_id must be a uuid.UUID")
    return (
        "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY; "
        f"SELECT set_config('{CLINIC_SETTING}', '{clinic_id}', true);"
    )


async def _fetch_sqlalchemy(
    engine: AsyncEngine, view: View[Any], params: dict[str, Any]
) -> Sequence[Any]:
    statement = view.statement.execution_options(**TRUSTED)  # scoped when it was built
    async with engine.connect() as conn:
        result = await conn.execute(statement, params)
        rows: Sequence[Any] = result.all()
        return rows
