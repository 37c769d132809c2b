"""Commands: writes that skip the ORM, the write-side sibling of :mod:`healthdb.view`.

A command is run by ``db.execute_write(command, options)``. On PostgreSQL
:func:`healthdb.query.write_unit.write_unit` opens the transaction on the driver pool
(``BEGIN`` with the clinic setting and an audit-lane claim), hands the connection to
:meth:`Command.run`, appends the :class:`Outcome`'s audit rows on the claimed lane, commits
(the audit rows with the write or not at all) and invalidates the outcome's cache tags. On
SQLite (no driver pool) the command's ``fallback``, the same write as an ORM operation, runs
through the ordinary unit of work.

:class:`RowUpdate` (bound: :class:`Change`) is the versioned update of one row of a tenant
table by id: ``UPDATE … SET …, version = version + 1 WHERE id = … AND clinic_id = …
[AND version = …] RETURNING <the view's columns>``, prepared once per set of changed
columns, under the rules of the ORM path: identity, tenancy and bookkeeping columns are
refused, as are unknown columns and masked values; encrypted columns are sealed by their
column types and blind indexes recomputed; a stale version raises
:class:`~healthdb.errors.ConflictError`, a missing, deleted or other clinic's row
:class:`~healthdb.errors.NotFound`. The ``clinic_id`` filter is part of every statement,
and row-level security checks the row on PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast, runtime_checkable

from sqlalchemy import Integer, Table, bindparam, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb.cache import table_tag
from healthdb.context import ClinicScope
from healthdb.errors import ConflictError, InvalidInput, NotFound
from healthdb.models.base import utcnow
from healthdb.phi.crypto import current_keyring, fill_blind_indexes
from healthdb.phi.declaration import phi_kind
from healthdb.phi.masking import MaskedValue
from healthdb.view import CLINIC_PARAM, View

__all__ = ["IMMUTABLE", "Change", "Command", "Outcome", "RowUpdate", "audit_row"]

R = TypeVar("R")
Fallback = Callable[[AsyncSession], Awaitable[Any]]

#: Columns a :class:`RowUpdate` never sets from its caller's changes.
IMMUTABLE = frozenset({"id", "clinic_id", "version", "created_at", "updated_at", "deleted_at"})


@dataclass(slots=True)
class Outcome(Generic[R]):
    """What a command's transaction produced: its result, the audit rows to commit with
    it (unsealed, as :func:`audit_row` makes them) and the cache tags it invalidates."""

    result: R
    audit: list[dict[str, Any]] = field(default_factory=list)
    tags: set[str] = field(default_factory=set)


@runtime_checkable
class Command(Protocol[R]):
    """A write without the ORM. ``run`` gets a driver (asyncpg) connection inside the
    command's transaction; ``fallback`` is the same write as an ORM operation (SQLite),
    whose entity ``result_of`` turns into the command's result."""

    @property
    def name(self) -> str: ...

    @property
    def fallback(self) -> Fallback: ...

    async def run(self, conn: Any, scope: ClinicScope, dialect: Dialect) -> Outcome[R]: ...

    def result_of(self, entity: Any) -> R: ...


def audit_row(
    scope: ClinicScope, action: str, table: str, key: uuid.UUID, fields: list[str]
) -> dict[str, Any]:
    """One unsealed audit row for ``action`` on row ``key`` of ``table``."""
    return {
        "clinic_id": scope.clinic_id,
        "actor_id": scope.actor,
        "actor_role": scope.role.value,
        "purpose": scope.purpose[:64],
        "outcome": "success",
        "request_id": scope.request_id[:64],
        "client_addr": scope.client_addr,
        "action": action,
        "resource_type": table,
        "resource_id": str(key),
        "phi_fields": fields,
    }


@dataclass(frozen=True, slots=True)
class _Prepared:
    sql: str
    names: tuple[str, ...]
    binds: Mapping[str, Callable[[Any], Any] | None]
    defaults: Mapping[str, Any]  # values the statement carries itself (the "+ 1")


class RowUpdate(Generic[R]):
    """Versioned updates of one row of ``model``'s table, returning the row as ``view``
    reads it (the view's record, masked and audited like any read)."""

    def __init__(self, model: type[Any], view: View[R], *, name: str) -> None:
        table = cast(Table, model.__table__)
        if "version" not in table.c or "clinic_id" not in table.c:
            raise TypeError("a RowUpdate needs a tenant table with a version column")
        self.model = model
        self.table = table
        self.view = view
        self.name = name
        self._columns = frozenset(c.key for c in table.columns)
        self._phi = frozenset(c.key for c in table.columns if phi_kind(c.info) is not None)
        self._prepared: dict[tuple[str, frozenset[str], bool], _Prepared] = {}

    def bind(
        self,
        key: uuid.UUID,
        *,
        expected_version: int | None,
        changes: Mapping[str, Any],
        fallback: Fallback,
    ) -> Change[R]:
        """The change of row ``key``; ``fallback`` is the same change as an ORM operation."""
        unknown = sorted(set(changes) - self._columns)
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(unknown)}")
        frozen = sorted(set(changes) & IMMUTABLE)
        if frozen:
            raise InvalidInput(f"field(s) cannot be changed: {', '.join(frozen)}")
        if any(isinstance(v, MaskedValue) for v in changes.values()):
            raise InvalidInput("refusing to store a masked value over the real one")
        return Change(self, key, expected_version, dict(changes), fallback)

    def prepared(self, dialect: Dialect, columns: frozenset[str], versioned: bool) -> _Prepared:
        """The statement for this set of changed columns (prepared once per set)."""
        key = (dialect.name, columns, versioned)
        found = self._prepared.get(key)
        if found is None:
            found = self._prepared[key] = self._prepare(dialect, columns, versioned)
        return found

    def _prepare(self, dialect: Dialect, columns: frozenset[str], versioned: bool) -> _Prepared:
        table = self.table
        sets: dict[str, Any] = {
            name: bindparam(f"set_{name}", type_=table.c[name].type) for name in sorted(columns)
        }
        sets["version"] = table.c.version + 1
        if "updated_at" in table.c:
            sets["updated_at"] = bindparam("now", type_=table.c.updated_at.type)
        statement = (
            update(table)
            .values(sets)
            .where(
                table.c.id == bindparam("key", type_=table.c.id.type),
                table.c.clinic_id == bindparam(CLINIC_PARAM, type_=table.c.clinic_id.type),
            )
        )
        if "deleted_at" in table.c:
            statement = statement.where(table.c.deleted_at.is_(None))
        if versioned:
            statement = statement.where(table.c.version == bindparam("expected", type_=Integer()))
        returning = [table.c[name] for name in self.view.field_names]
        compiled = statement.returning(*returning).compile(dialect=dialect)
        names = tuple(compiled.positiontup or ())
        binds = {name: compiled.binds[name].type.bind_processor(dialect) for name in set(names)}
        defaults = {name: compiled.binds[name].value for name in set(names)}
        return _Prepared(str(compiled), names, binds, defaults)


@dataclass(frozen=True, slots=True)
class Change(Generic[R]):
    """A bound :class:`RowUpdate`: the :class:`Command` ``db.execute_write`` runs."""

    command: RowUpdate[R]
    key: uuid.UUID
    expected_version: int | None
    changes: dict[str, Any]
    fallback: Fallback

    @property
    def name(self) -> str:
        return self.command.name

    async def run(self, conn: Any, scope: ClinicScope, dialect: Dialect) -> Outcome[R]:
        command = self.command
        values = dict(self.changes)
        fill_blind_indexes(command.model, values, current_keyring())
        versioned = self.expected_version is not None
        prepared = command.prepared(dialect, frozenset(values), versioned)
        row = await conn.fetchrow(prepared.sql, *self._arguments(prepared, scope, values))
        if row is None:
            await self._missing(conn, scope)
        view = command.view
        converted = view.convert([row], dialect, scope)
        table = str(command.table.name)
        changed = sorted(name for name in self.changes if name in command._phi)
        audit = [
            *view.accesses(converted, scope),
            audit_row(scope, "phi.update", table, self.key, changed),
        ]
        tags = {table_tag(table, scope.clinic_id)}
        return Outcome(view.records(converted, scope)[0], audit, tags)

    def result_of(self, entity: Any) -> R:
        view = self.command.view
        return view.record(*(getattr(entity, name) for name in view.field_names))

    def _arguments(
        self, prepared: _Prepared, scope: ClinicScope, values: Mapping[str, Any]
    ) -> list[Any]:
        given: dict[str, Any] = {f"set_{name}": value for name, value in values.items()}
        given.update(key=self.key, expected=self.expected_version, now=utcnow())
        given[CLINIC_PARAM] = scope.clinic_id
        out = []
        for name in prepared.names:
            process = prepared.binds[name]
            value = given[name] if name in given else prepared.defaults[name]
            out.append(value if process is None else process(value))
        return out

    async def _missing(self, conn: Any, scope: ClinicScope) -> None:
        """The update matched no row: a version conflict if the row is there, else absent."""
        table = self.command.table
        visible = " AND deleted_at IS NULL" if "deleted_at" in table.c else ""
        found = await conn.fetchval(
            f'SELECT version FROM "{table.name}" WHERE id = $1 AND clinic_id = $2{visible}',  # noqa: S608
            self.key,
            scope.clinic_id,
        )
        if found is None:
            raise NotFound(f"{self.name}: no such row")
        raise ConflictError(f"{self.name}: the row was modified by someone else")
