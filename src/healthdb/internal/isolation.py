"""The ORM wall.

The ORM wall: every ORM statement on a tenant table is scoped to the current clinic.
Installed on :class:`TenantSession` only, so plain SQLAlchemy sessions in the same process
are untouched. Fails closed: a tenant statement with no clinic scope raises
:class:`~healthdb.errors.ClinicContextRequired` before it reaches the database.

It also refuses Core statements and ``text()`` on tenant tables, which the ORM criteria
cannot see. The database wall (row-level security) lives in :mod:`healthdb.internal.rls`.
"""

from __future__ import annotations

import functools
import re
import uuid
from typing import Any, cast

import sqlglot
from sqlalchemy import Join, Select, Table, event
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.orm.util import LoaderCriteriaOption
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import ColumnClause, TextClause
from sqlalchemy.sql.lambdas import LambdaElement
from sqlalchemy.sql.selectable import TableClause, TextualSelect
from sqlglot import exp

from healthdb.context import current_scope
from healthdb.errors import ClinicContextRequired, UnsafeStatement
from healthdb.execution_options import WALLED_OPTION, is_trusted
from healthdb.models.base import Base, Tenant, is_tenant, tenant_tables

PESSIMISTIC = "healthdb_pessimistic"


class TenantSession(Session):
    """The session class of every unit of work the facade runs."""


def _touches_tenant(state: ORMExecuteState) -> bool:
    if any(is_tenant(m.class_) for m in state.all_mappers):
        return True
    # all_mappers lists only the selected entities: a tenant entity that appears solely in
    # FROM, WHERE or a subquery (``select(func.count()).select_from(Patient)``) is found
    # through the ORM annotation on its table or columns.
    for element in visitors.iterate(cast(visitors.ExternallyTraversible, state.statement)):
        entity = getattr(element, "_annotations", {}).get("parententity")
        if entity is not None and is_tenant(entity.class_):
            return True
    return False


@functools.lru_cache(maxsize=4096)
def _clinic_criteria(clinic_id: uuid.UUID) -> LoaderCriteriaOption:
    """One criteria option per clinic, built once: constructing it (and analysing its lambda)
    on every statement cost a quarter of a primary-key read. The closure variable is still
    tracked, so the clinic id is a bound parameter of every cached statement."""
    return with_loader_criteria(
        Tenant,
        lambda cls: cls.clinic_id == clinic_id,
        include_aliases=True,
        propagate_to_loaders=True,
    )


def _scope_statement(state: ORMExecuteState) -> None:
    # Whatever passes this wall is scoped (or refused): the connection wall lets it through.
    state.update_execution_options(**{WALLED_OPTION: True})
    if state.is_column_load:
        # A deferred column of a row this session already loaded under the criteria.
        return
    if state.is_relationship_load:
        # Lazy/selectin loads usually carry the parent's criteria, but not for an object
        # added in this session: scope them explicitly (a duplicate predicate is harmless).
        scope = current_scope()
        if scope is not None and _touches_tenant(state):
            state.statement = state.statement.options(_clinic_criteria(scope.clinic_id))
        return
    _refuse_unwalled(state)
    if not _touches_tenant(state):
        return
    scope = current_scope()
    if scope is None:
        raise ClinicContextRequired("tenant tables need a clinic scope: use db.clinic(...)")
    statement = state.statement.options(_clinic_criteria(scope.clinic_id))
    if isinstance(statement, Select):
        statement = _scope_implicit_froms(statement, scope.clinic_id)
        if state.session.info.get(PESSIMISTIC):
            statement = statement.with_for_update()
    state.statement = statement


def _scope_implicit_froms(statement: Select[Any], clinic_id: uuid.UUID) -> Select[Any]:
    """The loader criteria reach entities the statement selects or joins, not a tenant table
    that enters FROM only through a column in WHERE (``select(func.count()).where(
    func.lower(Patient.mrn) == x)``): filter every plain tenant table that the WHERE clause
    brings into the outer FROM list explicitly. A duplicate of a predicate the criteria
    already added is harmless; subqueries are scoped by the criteria on their own."""
    names = tenant_name_set()
    seen: set[str] = set()
    for criterion in statement._where_criteria:
        for table in _plain_tables(criterion._from_objects):
            name = str(table.name).lower()
            if name in names and name not in seen:
                seen.add(name)
                statement = statement.where(_clinic_filter(table, clinic_id))
    return statement


@functools.lru_cache(maxsize=4096)
def _clinic_filter(table: Table, clinic_id: uuid.UUID) -> Any:
    """``table.clinic_id == clinic_id``, built once per table and clinic (expressions are
    immutable; building it again on every statement cost a tenth of a primary-key read)."""
    return table.c.clinic_id == clinic_id


def _plain_tables(froms: Any) -> list[Table]:
    found: list[Table] = []
    for item in froms:
        if isinstance(item, Table):
            found.append(item)
        elif isinstance(item, Join):
            found.extend(_plain_tables((item.left, item.right)))
    return found


# -- Core statements and text() outside the ORM wall -------------------------------------------
#
# with_loader_criteria only sees ORM entities. A Core statement on a tenant ``Table``
# (``select(Patient.__table__)``, ``Patient.__table__.update()``) or a ``text()`` naming a tenant
# table would reach the database unscoped, so the wall refuses them. The library's own Core
# statements (bulk-insert staging, execute_raw after the SQL guard, the audit chain) carry
# the private TRUSTED option (healthdb.execution_options); callers must not set it.

_SQLGLOT_DIALECTS = {"postgresql": "postgres", "sqlite": "sqlite"}
_UNWALLED_HINT = (
    ": query tenant tables through ORM entities (select(Patient), update(Patient)), "
    "or use db.execute_raw(sql, reason=...) for audited raw SQL"
)


@functools.lru_cache(maxsize=8)
def _tenant_names(_mapper_count: int) -> frozenset[str]:
    return frozenset(name.lower() for name in tenant_tables())


def tenant_name_set() -> frozenset[str]:
    """Lower-cased names of the tenant tables."""
    # Keyed by the number of mapped classes, so models mapped later are picked up. The
    # registry's manager map has one entry per mapper and a cheap len(); ``registry.mappers``
    # builds a frozenset of every mapper on each call (twice per statement here).
    managers = getattr(Base.registry, "_managers", None)
    count = len(managers) if managers is not None else len(Base.registry.mappers)
    return _tenant_names(count)


@functools.lru_cache(maxsize=2048)
def text_problem(sql: str, dialect: str | None, names: frozenset[str], whole: bool) -> str | None:
    """Why raw SQL text must not run outside the wall, or None.

    Every word is checked, not only parsed table references, so a tenant table named in a
    fragment (``select_from(text("patients"))``), a command sqlglot cannot model (``PRAGMA``)
    or a string handed to a function is refused too. A whole statement must also parse.
    """
    words = set(re.findall(r"\w+", sql.lower()))
    hit = sorted(words & names)
    if hit:
        return f"raw SQL text names tenant table {hit[0]!r}"
    if not whole:
        return None
    try:
        parsed = sqlglot.parse(sql, read=dialect)
    except Exception:  # any parser failure: refuse, never guess (fail closed)
        return "raw SQL text that cannot be parsed is refused"
    for statement in parsed:
        if statement is None:
            continue
        for table in statement.find_all(exp.Table):
            if table.name.lower() in names:
                return f"raw SQL text names tenant table {table.name!r}"
    return None


def unwalled_problem(statement: Any, names: frozenset[str], dialect: str | None) -> str | None:
    """Find a tenant table the ORM criteria will not cover: a Core ``Table``/``TableClause``
    or column without ORM annotations, or raw SQL text naming one."""
    if isinstance(statement, LambdaElement):
        statement = statement._resolved
    # The statement's own text must parse; fragments inside a Core statement are word-checked.
    whole = statement.element if isinstance(statement, TextualSelect) else statement
    stack: list[Any] = [statement]
    seen: set[int] = set()
    subject = getattr(statement, "_propagate_attrs", {}).get("plugin_subject")
    if subject is not None and not subject.is_aliased_class:
        # ``session.get`` puts the mapper's own primary-key clause (built from its plain
        # columns) in the WHERE of a SELECT of that entity, which the criteria scope.
        seen.add(id(subject.mapper._get_clause[0]))
    while stack:
        element = stack.pop()
        if id(element) in seen:
            continue
        seen.add(id(element))
        annotations = getattr(element, "_annotations", None)
        if annotations and "parententity" in annotations:
            continue  # an ORM entity (or one of its columns): with_loader_criteria scopes it
        if isinstance(element, TableClause):
            if str(element.name).lower() in names:
                return f"Core statement on tenant table {str(element.name)!r}"
            continue  # a table's children are its own columns
        if isinstance(element, TextClause):
            problem = text_problem(element.text, dialect, names, element is whole)
            if problem:
                return problem
            continue
        if isinstance(element, ColumnClause):
            if element.is_literal:
                problem = text_problem(str(element.name), dialect, names, False)
                if problem:
                    return problem
            if element.table is not None:
                stack.append(element.table)
            continue
        # The generic traversal: explicit children only. Select.get_children() would add the
        # FROMs implied by ORM columns, whose plain tables the ORM criteria do cover.
        stack.extend(visitors.HasTraverseInternals.get_children(element))
    return None


def sqlglot_dialect(name: str) -> str | None:
    """sqlglot's name for a SQLAlchemy dialect (None: sqlglot's generic dialect)."""
    return _SQLGLOT_DIALECTS.get(name)


def _refuse_unwalled(state: ORMExecuteState) -> None:
    if is_trusted(state.execution_options):
        return
    try:
        dialect = sqlglot_dialect(state.session.get_bind().dialect.name)
    except Exception:  # an unbound session: parse with sqlglot's generic dialect
        dialect = None
    problem = unwalled_problem(state.statement, tenant_name_set(), dialect)
    if problem:
        raise UnsafeStatement(problem + _UNWALLED_HINT)


def _stamp_new_rows(session: Session, _context: Any, _instances: Any) -> None:
    """New tenant rows take the scope's clinic; rows of, or moved to, another clinic are refused."""
    new = [obj for obj in session.new if is_tenant(obj)]
    changed = [obj for obj in (*session.dirty, *session.deleted) if is_tenant(obj)]
    if not (new or changed):
        return
    scope = current_scope()
    if scope is None:
        raise ClinicContextRequired("writing a tenant row needs a clinic scope")
    for obj in new:
        if obj.clinic_id is None:
            obj.clinic_id = scope.clinic_id
    if any(obj.clinic_id != scope.clinic_id for obj in (*new, *changed)):
        raise ClinicContextRequired("a row may only be written in the current clinic")


def install(session_class: type[Session] = TenantSession) -> None:
    """Attach the wall to ``session_class`` (idempotent)."""
    if not event.contains(session_class, "do_orm_execute", _scope_statement):
        event.listen(session_class, "do_orm_execute", _scope_statement)
    if not event.contains(session_class, "before_flush", _stamp_new_rows):
        event.listen(session_class, "before_flush", _stamp_new_rows)
