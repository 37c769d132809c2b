"""Writes to clinics, users and settings, recorded for the audit trail like PHI writes.

A model opts in with ``__audit_as__ = "clinic"``: every row of it that a unit of work
inserts, changes or deletes is recorded as ``clinic.create`` / ``clinic.update`` /
``clinic.delete`` with the row id, and so is an ORM bulk ``update()`` / ``delete()`` on it
(without a row id). The record names the fields written, in the audit row's ``reason``
(``fields: active, rate_limit_per_minute``), never their values; the unit of work writes it
in the same transaction as the change, stamped with the scope's actor, role, clinic and
request (:mod:`healthdb.internal.phi_access` collects both kinds of record).

A model with ``__clinic_key__ = "id"`` (``clinics``) is its own clinic: a row of it is
written only inside that clinic's scope, and a bulk statement on it is narrowed to that
row. This is the ORM's copy of the database wall of migration 0008, so SQLite refuses the
same writes PostgreSQL does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from healthdb.context import current_scope
from healthdb.errors import ClinicContextRequired
from healthdb.internal.phi_access import Access, pending

__all__ = ["install"]

#: Bookkeeping columns every write touches; naming them says nothing.
_QUIET = frozenset({"created_at", "updated_at", "version"})


def _name(model: object) -> str | None:
    name = getattr(model, "__audit_as__", None)
    return name if isinstance(name, str) else None


def _record(
    session: Session, model: type[Any], verb: str, row_id: str | None, fields: Iterable[str]
) -> None:
    names = sorted(set(fields) - _QUIET)
    note = f"fields: {', '.join(names)}" if names else None
    table = str(model.__table__.name)
    pending(session).append(Access(f"{_name(model)}.{verb}", table, row_id, (), None, note))


def _row_id(instance: Any) -> str | None:
    key = inspect(instance).mapper.primary_key_from_instance(instance)
    return None if not key or key[0] is None else str(key[0])


def _own_clinic_only(instances: Iterable[Any]) -> None:
    """A row that names its own clinic may only be written in that clinic's scope."""
    for instance in instances:
        key = getattr(type(instance), "__clinic_key__", None)
        if key is None:
            continue
        scope = current_scope()
        if scope is None or getattr(instance, key) != scope.clinic_id:
            raise ClinicContextRequired("a clinic's row may only be written in its own scope")


def _before_flush(session: Session, _ctx: UOWTransaction, _instances: object) -> None:
    _own_clinic_only((*session.new, *session.dirty, *session.deleted))


def _after_flush(session: Session, _ctx: UOWTransaction) -> None:
    for instance in session.new:
        if _name(instance):
            state = inspect(instance)
            columns = (attr.key for attr in state.mapper.column_attrs)
            written = (key for key in columns if state.dict.get(key) is not None)
            _record(session, type(instance), "create", _row_id(instance), written)
    for instance in session.dirty:
        if _name(instance) and session.is_modified(instance):
            state = inspect(instance)
            changed = (a.key for a in state.mapper.column_attrs if state.attrs[a.key].history.added)
            _record(session, type(instance), "update", _row_id(instance), changed)
    for instance in session.deleted:
        if _name(instance):
            _record(session, type(instance), "delete", _row_id(instance), ())


def _on_bulk(state: ORMExecuteState) -> None:
    if not (state.is_update or state.is_delete):
        return
    model = getattr(state.bind_mapper, "class_", None)
    if not isinstance(model, type) or not _name(model):
        return
    key = getattr(model, "__clinic_key__", None)
    if key is not None:
        scope = current_scope()
        if scope is None:
            raise ClinicContextRequired("a clinic's row may only be written in its own scope")
        statement: Any = state.statement  # an ORM update() or delete(): both have where()
        state.statement = statement.where(getattr(model, key) == scope.clinic_id)
    values = getattr(state.statement, "_values", None) or {}
    fields = (str(getattr(column, "key", column)) for column in values)
    _record(state.session, model, "update" if state.is_update else "delete", None, fields)


def install(session_class: type[Session]) -> None:
    """Attach the change recorder to ``session_class`` (idempotent)."""
    for name, listener in (
        ("before_flush", _before_flush),
        ("after_flush", _after_flush),
        ("do_orm_execute", _on_bulk),
    ):
        if not event.contains(session_class, name, listener):
            event.listen(session_class, name, listener)
