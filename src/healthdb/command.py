"""Commands: writes that skip the ORM, the write-side sibling of :mod:`healthdb.view`.

A :class:`RowUpdate` is the versioned update of one row of a tenant table by its id: one
``UPDATE … SET … , version = version + 1 WHERE id = … AND clinic_id = … [AND version = …]
RETURNING <the record's columns>``, prepared once per set of changed columns. On
PostgreSQL :func:`healthdb.query.write_unit.write_unit` runs it on the driver pool in the
write's own transaction with its audit rows (the returned row as read, and the update with
the PHI fields it changed), in four round trips. The rules are those of the ORM path:

* the view wall: the ``clinic_id`` filter is part of the statement, outside a clinic scope
  the command refuses to run, and row-level security checks the row (``USING`` and
  ``WITH CHECK``) on PostgreSQL;
* identity, tenancy and bookkeeping columns cannot be changed, unknown columns are refused,
  a masked value is never written over the real one, encrypted columns are encrypted and
  their blind indexes recomputed as the ORM's column types would;
* ``expected_version`` mismatch → :class:`~healthdb.errors.ConflictError`, a missing (or
  soft-deleted, or other clinic's) row → :class:`~healthdb.errors.NotFound`.

``fallback`` is the same change as an ORM operation: SQLite (no driver pool) runs that.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import Integer, Table, bindparam, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb.errors import InvalidInput
from healthdb.models.base import utcnow
from healthdb.phi.crypto import current_keyring, fill_blind_indexes
from healthdb.phi.declaration import phi_kind
from healthdb.phi.masking import MaskedValue
from healthdb.view import CLINIC_PARAM, View

__all__ = ["Change", "RowUpdate"]

R = TypeVar("R")
Fallback = Callable[[AsyncSession], Awaitable[Any]]

#: Columns a :class:`RowUpdate` never sets from its caller's changes.
IMMUTABLE = frozenset({"id", "clinic_id", "version", "created_at", "updated_at", "deleted_at"})


@dataclass(frozen=True, slots=True)
class _Prepared:
    sql: str
    names: tuple[str, ...]
    binds: Mapping[str, Callable[[Any], Any] | None]
    defaults: Mapping[str, Any]  # values the statement carries itself (the "+ 1")


class RowUpdate(Generic[R]):
    """Versioned updates of one row of ``table``, returning the row as ``view`` reads it
    (the view's record, masked and audited like any read)."""

    def __init__(self, model: type[Any], view: View[R], *, name: str) -> None:
        table = cast(Table, model.__table__)
        if "version" not in table.c or "clinic_id" not in table.c:
            raise TypeError("a RowUpdate needs a tenant table with a version column")
        self.model = model
        self.table = table
        self.view = view
        self.name = name
        self._model_columns = {c.key: c for c in table.columns}
        self._phi = {c.key for c in table.columns if phi_kind(c.info) is not None}

    def bind(
        self,
        key: uuid.UUID,
        *,
        expected_version: int | None,
        changes: Mapping[str, Any],
        fallback: Fallback,
    ) -> Change[R]:
        """The change of row ``key``; ``fallback`` is the same change as an ORM operation."""
        unknown = sorted(set(changes) - set(self._model_columns))
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(unknown)}")
        frozen = sorted(set(changes) & IMMUTABLE)
        if frozen:
            raise InvalidInput(f"field(s) cannot be changed: {', '.join(frozen)}")
        if any(isinstance(v, MaskedValue) for v in changes.values()):
            raise InvalidInput("refusing to store a masked value over the real one")
        return Change(self, key, expected_version, dict(changes), fallback)

    def values(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """What the statement sets: the changes and the blind indexes they move (encrypted
        columns are encrypted by their column types' bind processing)."""
        values = dict(changes)
        fill_blind_indexes(self.model, values, current_keyring())
        return values

    def changed_phi(self, changes: Mapping[str, Any]) -> list[str]:
        return sorted(name for name in changes if name in self._phi)

    def prepared(self, dialect: Dialect, columns: frozenset[str], versioned: bool) -> _Prepared:
        return _prepare(self, dialect, columns, versioned)


@dataclass(frozen=True, slots=True)
class Change(Generic[R]):
    """A bound :class:`RowUpdate`: what ``db.execute_write`` runs."""

    command: RowUpdate[R]
    key: uuid.UUID
    expected_version: int | None
    changes: dict[str, Any]
    fallback: Fallback


_CACHE: dict[tuple[int, str, frozenset[str], bool], _Prepared] = {}


def _prepare(
    command: RowUpdate[Any], dialect: Dialect, columns: frozenset[str], versioned: bool
) -> _Prepared:
    key = (id(command), dialect.name, columns, versioned)
    found = _CACHE.get(key)
    if found is not None:
        return found
    table = command.table
    sets: dict[str, Any] = {name: bindparam(f"set_{name}", type_=table.c[name].type)
                            for name in sorted(columns)}  # fmt: skip
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
    returning = [table.c[name] for name in command.view.field_names]
    compiled = statement.returning(*returning).compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())
    binds = {name: compiled.binds[name].type.bind_processor(dialect) for name in set(names)}
    defaults = {name: compiled.binds[name].value for name in set(names)}
    found = _CACHE[key] = _Prepared(str(compiled), names, binds, defaults)
    return found


def arguments(
    prepared: _Prepared, change: Change[Any], clinic_id: uuid.UUID, values: Mapping[str, Any]
) -> list[Any]:
    """The positional arguments of ``prepared`` for ``change``."""
    given: dict[str, Any] = {f"set_{name}": value for name, value in values.items()}
    given.update(key=change.key, expected=change.expected_version, now=utcnow())
    given[CLINIC_PARAM] = clinic_id
    out = []
    for name in prepared.names:
        process = prepared.binds[name]
        value = given[name] if name in given else prepared.defaults[name]
        out.append(value if process is None else process(value))
    return out
