"""The wall below the session: statements executed on a connection directly.

The ORM wall (:mod:`healthdb.internal.isolation`) sees what a ``TenantSession`` executes.
But ``await session.connection()`` hands out the connection itself, and a statement run on
it, whether Core, ORM-enabled or a driver string, never passes ``do_orm_execute``: on
SQLite it would read and write every clinic's rows (PostgreSQL's row-level security still
holds there). This hook, on the service engines' ``before_execute``, refuses any such
statement that names a tenant table.

It lets through, without looking further:

* statements the ORM wall has just scoped (it marks them with :data:`WALLED_OPTION`);
* the unit of work's flush statements, whose rows ``before_flush`` already checked (the
  scope's clinic stamped, other clinics refused). They are recognised by the mapper's own
  compiled cache, which only SQLAlchemy's persistence passes as an execution option;
* the library's own statements carrying the private ``TRUSTED`` option
  (:mod:`healthdb.execution_options`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import ClauseElement, visitors
from sqlalchemy.sql.selectable import TableClause

from healthdb.errors import UnsafeStatement
from healthdb.execution_options import WALLED_OPTION, is_trusted
from healthdb.internal import isolation
from healthdb.models.base import Base, is_tenant

_HINT = (
    ": a statement executed on the session's connection bypasses the clinic wall; run it "
    "through the session (session.execute(select(Patient)...)) or db.execute_raw(sql, ...)"
)


@functools.lru_cache(maxsize=8)
def _flush_caches(_mapper_count: int) -> tuple[Any, ...]:
    """The compiled caches of the tenant mappers (their flushes pass them as an option)."""
    return tuple(
        mapper._compiled_cache for mapper in Base.registry.mappers if is_tenant(mapper.class_)
    )


def _is_flush(options: Mapping[str, Any]) -> bool:
    cache = options.get("compiled_cache")
    if cache is None:
        return False
    return any(cache is own for own in _flush_caches(len(Base.registry.mappers)))


def _problem(statement: Any, dialect: str | None) -> str | None:
    """The tenant table ``statement`` names, as a reason to refuse it, or None."""
    if not isinstance(statement, ClauseElement):
        return None  # DDL and other executables the service does not issue per request
    names = isolation.tenant_name_set()
    # Core tables and every text() fragment, word-checked, as the ORM wall checks them.
    problem = isolation.unwalled_problem(statement, names, dialect)
    if problem:
        return problem
    # ORM-enabled elements pass that check (the ORM criteria scope them there); here nothing
    # scopes them, so every table they reach counts.
    for element in visitors.iterate(statement, {"column_tables": True}):
        table = element if isinstance(element, TableClause) else getattr(element, "table", None)
        if isinstance(table, TableClause) and str(table.name).lower() in names:
            return f"statement on tenant table {str(table.name)!r}"
    return None


def _guard(
    conn: Connection,
    statement: Any,
    _multiparams: Any,
    _params: Any,
    execution_options: Mapping[str, Any],
) -> None:
    if execution_options.get(WALLED_OPTION) or is_trusted(execution_options):
        return
    if _is_flush(execution_options):
        return
    problem = _problem(statement, isolation.sqlglot_dialect(conn.dialect.name))
    if problem:
        raise UnsafeStatement(problem + _HINT)


def _guard_driver_sql(
    conn: Connection,
    _cursor: Any,
    statement: str,
    _parameters: Any,
    context: Any,
    _executemany: bool,
) -> None:
    # exec_driver_sql() skips before_execute; it is the one path here with nothing compiled.
    if context is None or context.compiled is not None:
        return
    if is_trusted(context.execution_options):
        return
    dialect = isolation.sqlglot_dialect(conn.dialect.name)
    # Every word is checked (a tenant table named anywhere is refused); unlike text() in
    # a Core statement, driver SQL need not parse (SAVEPOINT, SET, ... are fine).
    problem = isolation.text_problem(statement, dialect, isolation.tenant_name_set(), False)
    if problem:
        raise UnsafeStatement(problem + _HINT)


_HOOKS = (("before_execute", _guard), ("before_cursor_execute", _guard_driver_sql))


def install(engine: Engine) -> None:
    """Guard ``engine``'s connections (idempotent)."""
    for name, hook in _HOOKS:
        if not event.contains(engine, name, hook):
            event.listen(engine, name, hook)


def remove(engine: Engine) -> None:
    """Take the guard off ``engine`` (mutation tests: what holds without this wall?)."""
    for name, hook in _HOOKS:
        if event.contains(engine, name, hook):
            event.remove(engine, name, hook)
