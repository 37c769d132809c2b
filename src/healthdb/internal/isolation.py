"""The ORM wall: every ORM statement on a tenant table is scoped to the current clinic.

Installed on :class:`TenantSession` only, so plain SQLAlchemy sessions in the same process
are untouched. Fails closed: a tenant statement with no clinic scope raises
:class:`~healthdb.errors.ClinicContextRequired` before it reaches the database.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any, cast

from sqlalchemy import Select, event
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.orm.util import LoaderCriteriaOption
from sqlalchemy.sql import visitors

from healthdb.context import current_scope
from healthdb.errors import ClinicContextRequired
from healthdb.models.base import Tenant, is_tenant

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
    if state.is_column_load or state.is_relationship_load:
        # Lazy/deferred loads inherit the criteria of the statement that loaded the parent.
        return
    if not _touches_tenant(state):
        return
    scope = current_scope()
    if scope is None:
        raise ClinicContextRequired("tenant tables need a clinic scope: use db.clinic(...)")
    statement = state.statement.options(_clinic_criteria(scope.clinic_id))
    if isinstance(statement, Select) and state.session.info.get(PESSIMISTIC):
        statement = statement.with_for_update()
    state.statement = statement


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
