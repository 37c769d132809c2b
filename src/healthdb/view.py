"""Views: reads that skip the ORM, as the read side of CQRS does.

The ORM earns its cost in a unit of work (identity map, change tracking, flush order). A
read whose rows go straight back to a caller needs none of it, and on the hot path the ORM
costs several times the query. A :class:`View` is one Core ``SELECT`` of table columns,
prepared once (built at module level or memoised per shape): the clinic filter is added
when it is built, it is compiled once per dialect, and each row is mapped straight into a
frozen record, its PHI decrypted, masked for the caller's role and audited on the way out.

The walls hold on this path by construction:

* **View wall** (every backend): every tenant table in the view's ``FROM`` gets
  ``clinic_id = <the scope's clinic>`` when the view is built; a tenant table anywhere else
  (a subquery, a CTE) is refused, and running the view outside a clinic scope raises
  :class:`~healthdb.errors.ClinicContextRequired`.
* **Database wall** (PostgreSQL): the read runs in a transaction that sets the clinic for
  row-level security, exactly as the ORM path's does.

PHI is declared by the columns themselves (:mod:`healthdb.phi.declaration`): only plain
table columns may be selected, so every PHI column is known, and a table whose PHI is
selected must have its primary key selected too (each row is audited by id).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import Column, Select, Table, Uuid, bindparam
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import AliasedReturnsRows, Join, SelectBase, TableClause

from healthdb.context import ClinicScope
from healthdb.errors import ClinicContextRequired, InvalidInput, UnsafeStatement
from healthdb.models.base import tenant_tables
from healthdb.phi.declaration import PhiKind, phi_kind
from healthdb.phi.masking import Visibility, mask_value, visibility

__all__ = ["CLINIC_PARAM", "Read", "View"]

R = TypeVar("R")
T = TypeVar("T")

#: The bound parameter the view wall adds; the scope's clinic is bound to it per call.
CLINIC_PARAM = "healthdb_clinic_id"


@dataclass(frozen=True, slots=True)
class _Phi:
    """The PHI of one table in a view: where its key and its PHI columns sit in a row."""

    table: str
    key_index: int
    fields: tuple[str, ...]  # sorted attribute names, as the audit trail lists them
    kinds: tuple[tuple[int, PhiKind], ...]  # (row index, kind) per PHI column


@dataclass(frozen=True, slots=True)
class Compiled:
    """A view compiled for one dialect: SQL text with positional parameters."""

    sql: str
    names: tuple[str, ...]  # parameter name per position
    defaults: Mapping[str, Any]  # values of parameters the statement carries itself
    binds: Mapping[str, Callable[[Any], Any] | None]
    results: tuple[Callable[[Any], Any] | None, ...]


class View(Generic[R]):
    """A read shape over table columns, mapped into ``record`` (a dataclass whose fields are
    the selected columns, in order). Bind values per call: :meth:`one`, :meth:`all`,
    :meth:`page`."""

    def __init__(self, statement: Select[Any], record: type[R], *, name: str) -> None:
        columns = _plain_columns(statement)
        _check_record(record, columns)
        self.name = name
        self.record = record
        #: The record's fields: the selected columns' keys, in order.
        self.field_names = tuple(c.key for c in columns)
        self.tenant = _tenant_froms(statement)
        #: The statement as given, and as it runs: with the view wall's clinic filter.
        self.source = statement
        self.statement = _scoped(statement, self.tenant)
        self.phi = _phi_of(columns)
        self._compiled: dict[str, Compiled] = {}
        self._masks: dict[Any, tuple[tuple[int, PhiKind, Visibility], ...]] = {}

    # -- binding --------------------------------------------------------------------------

    def one(self, **params: Any) -> Read[R | None]:
        """At most one row (more is an error): the record or ``None``."""
        return Read(self, params, None, _one)

    def all(self, **params: Any) -> Read[list[R]]:
        """Every row the statement returns (bound it with a LIMIT)."""
        return Read(self, params, None, _all)

    def page(self, keep: int, make: Callable[[list[R], bool], T], **params: Any) -> Read[T]:
        """The first ``keep`` rows are disclosed; a further row only tells ``make`` that
        there is more (it is neither returned nor audited). Bind the statement's LIMIT to
        ``keep + 1``."""
        return Read(self, params, keep, make)

    # -- running --------------------------------------------------------------------------

    def compiled(self, dialect: Dialect) -> Compiled:
        """The statement compiled for ``dialect`` (once per dialect)."""
        found = self._compiled.get(dialect.name)
        if found is None:
            found = self._compiled[dialect.name] = _compile(self.statement, dialect)
        return found

    def params(self, read: Read[Any], scope: ClinicScope | None) -> dict[str, Any]:
        """The call's parameters with the view wall's clinic; refuses a tenant view outside
        a clinic scope (fail closed)."""
        values = dict(read.params)
        if self.tenant or self.phi:
            if scope is None:
                raise ClinicContextRequired(f"view {self.name} needs a clinic scope")
            values[CLINIC_PARAM] = scope.clinic_id
        return values

    def records(self, rows: Sequence[Sequence[Any]], scope: ClinicScope | None) -> list[R]:
        """Rows (already converted by the driver layer) as records, masked for the scope's
        role: a value the role may not see is never even decrypted."""
        masks = self._mask_plan(scope)
        make = self.record
        if not masks:
            return [make(*row) for row in rows]
        out = []
        for row in rows:
            values = list(row)
            for index, kind, seen in masks:
                values[index] = mask_value(kind, values[index], seen)
            out.append(make(*values))
        return out

    def convert(
        self, rows: Sequence[Sequence[Any]], dialect: Dialect, scope: ClinicScope | None
    ) -> list[list[Any]]:
        """Rows as the driver returned them, through the column types' result conversion
        (decryption included), skipping the values the scope's role will not see."""
        hidden = self.hidden(scope)
        results = self.compiled(dialect).results
        steps = [(i, p) for i, p in enumerate(results) if p is not None and i not in hidden]
        out = []
        for row in rows:
            values = list(row)
            for index in hidden:
                values[index] = None
            for index, process in steps:
                values[index] = process(values[index])
            out.append(values)
        return out

    def hidden(self, scope: ClinicScope | None) -> frozenset[int]:
        """Row positions the scope's role may not see at all (skip converting them)."""
        return frozenset(i for i, _, seen in self._mask_plan(scope) if seen is Visibility.NONE)

    def accesses(self, rows: Sequence[Sequence[Any]], scope: ClinicScope) -> list[dict[str, Any]]:
        """One unsealed audit row per disclosed row and PHI table (``phi.read``, or
        ``phi.read_masked`` when the role sees some of it only partly or not at all)."""
        common = {
            "clinic_id": scope.clinic_id,
            "actor_id": scope.actor,
            "actor_role": scope.role.value,
            "purpose": scope.purpose[:64],
            "outcome": "success",
            "request_id": scope.request_id[:64],
            "client_addr": scope.client_addr,
        }
        audit: list[dict[str, Any]] = []
        for phi in self.phi:
            masked = any(visibility(scope.role, k) is not Visibility.FULL for _, k in phi.kinds)
            action = "phi.read_masked" if masked else "phi.read"
            fields = list(phi.fields)
            for row in rows:
                audit.append(
                    {
                        **common,
                        "action": action,
                        "resource_type": phi.table,
                        "resource_id": str(row[phi.key_index]),
                        "phi_fields": fields,
                    }
                )
        return audit

    def _mask_plan(self, scope: ClinicScope | None) -> tuple[tuple[int, PhiKind, Visibility], ...]:
        role = None if scope is None else scope.role
        plan = self._masks.get(role)
        if plan is None:
            plan = self._masks[role] = tuple(
                (index, kind, seen)
                for phi in self.phi
                for index, kind in phi.kinds
                if (seen := visibility(role, kind)) is not Visibility.FULL
            )
        return plan


@dataclass(frozen=True, slots=True)
class Read(Generic[T]):
    """A view bound to its parameters: what ``db.execute_read`` runs. ``keep``: disclose at
    most this many rows; ``finish`` shapes the disclosed records (and whether more exist)
    into the result."""

    view: View[Any]
    params: Mapping[str, Any]
    keep: int | None
    finish: Callable[[list[Any], bool], T]

    def disclosed(self, rows: Sequence[Any]) -> tuple[Sequence[Any], bool]:
        """The rows handed out, and whether rows beyond them exist."""
        if self.keep is not None and len(rows) > self.keep:
            return rows[: self.keep], True
        return rows, False


def _one(records: list[Any], _more: bool) -> Any:
    if len(records) > 1:
        raise InvalidInput("the view returned more than one row")
    return records[0] if records else None


def _all(records: list[Any], _more: bool) -> list[Any]:
    return records


# -- building --------------------------------------------------------------------------------


def _plain_columns(statement: Select[Any]) -> list[Column[Any]]:
    columns = []
    for column in statement.selected_columns:
        if not isinstance(column, Column) or not isinstance(column.table, Table):
            raise UnsafeStatement(
                "a view selects plain table columns only (their PHI declaration must be known)"
            )
        columns.append(column)
    return columns


def _check_record(record: type[Any], columns: list[Column[Any]]) -> None:
    if not dataclasses.is_dataclass(record):
        raise TypeError("a view's record must be a dataclass")
    names = [f.name for f in dataclasses.fields(record)]
    if names != [c.key for c in columns]:
        raise TypeError(f"{record.__name__} fields must be the selected columns, in order")


def _tenant_froms(statement: Select[Any]) -> tuple[Table, ...]:
    tenant = {name.lower() for name in tenant_tables()}
    top: list[Table] = []
    for item in statement.get_final_froms():
        top.extend(_tables(item))
    scoped = tuple(t for t in top if str(t.name).lower() in tenant)
    for element in visitors.iterate(cast(visitors.ExternallyTraversible, statement)):
        if element is not statement and isinstance(
            element, SelectBase | AliasedReturnsRows | TextClause
        ):
            # Fail closed: a subquery, alias or SQL text could reach a tenant table that the
            # filter on the FROM list does not cover. Such reads go through the ORM.
            raise UnsafeStatement("a view is one plain SELECT: no subqueries, aliases or text")
        table = element if isinstance(element, TableClause) else getattr(element, "table", None)
        if not isinstance(table, TableClause):
            continue
        name = str(table.name)
        if name.lower() in tenant and not any(table is t for t in scoped):
            raise UnsafeStatement(f"a view may name tenant table {name!r} only in its FROM list")
    return scoped


def _tables(item: Any) -> list[Table]:
    if isinstance(item, Table):
        return [item]
    if isinstance(item, Join):
        return _tables(item.left) + _tables(item.right)
    return []


def _scoped(statement: Select[Any], tenant: tuple[Table, ...]) -> Select[Any]:
    clinic = bindparam(CLINIC_PARAM, type_=Uuid())
    for table in tenant:
        statement = statement.where(table.c.clinic_id == clinic)
    return statement


def _phi_of(columns: list[Column[Any]]) -> tuple[_Phi, ...]:
    by_table: dict[str, list[tuple[int, Column[Any], PhiKind]]] = {}
    for index, column in enumerate(columns):
        kind = phi_kind(column.info)
        if kind is not None:
            by_table.setdefault(str(column.table.name), []).append((index, column, kind))
    found = []
    for name, phi_columns in by_table.items():
        table = phi_columns[0][1].table
        keys = [i for i, c in enumerate(columns) if c.table is table and c.primary_key]
        if len(keys) != 1:
            raise UnsafeStatement(f"a view reading PHI of {name!r} must select its primary key")
        found.append(
            _Phi(
                table=name,
                key_index=keys[0],
                fields=tuple(sorted(c.key for _, c, _ in phi_columns)),
                kinds=tuple((i, kind) for i, _, kind in phi_columns),
            )
        )
    return tuple(found)


def _compile(statement: Select[Any], dialect: Dialect) -> Compiled:
    compiled = statement.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())
    if any(compiled.binds[name].expanding for name in names):
        raise UnsafeStatement("views take arrays (= ANY), not expanding IN parameters")
    binds = {name: compiled.binds[name].type.bind_processor(dialect) for name in set(names)}
    defaults = {
        name: compiled.binds[name].value
        for name in set(names)
        if not compiled.binds[name].required and compiled.binds[name].callable is None
    }
    results = tuple(
        column.type.result_processor(dialect, None) for column in statement.selected_columns
    )
    return Compiled(str(compiled), names, defaults, binds, results)
