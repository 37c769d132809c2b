"""Who touched which PHI: ORM events record every PHI read and write of a session, so the
unit of work can audit them in the same transaction and mask what it hands back.

Driven entirely by the column declarations (:mod:`healthdb.phi.declaration`):

* an entity loaded from the database records ``phi.read`` (or ``phi.read_masked`` when the
  scope's role sees some of its PHI only partly or not at all), one per row;
* a select of bare PHI columns (``select(Patient.ssn)``) records a read without a row id;
* a flush records ``phi.create`` / ``phi.update`` / ``phi.delete`` (a soft delete, setting
  ``deleted_at``, counts as a delete) with the PHI fields written;
* ORM bulk ``update()`` / ``delete()`` on a PHI model record a write without a row id.

Before a flush, blind-index columns are filled from their encrypted source, and a
:class:`~healthdb.phi.masking.MaskedValue` headed for the database is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction
from sqlalchemy.orm.attributes import set_committed_value

from healthdb.context import ClinicScope
from healthdb.errors import InvalidInput
from healthdb.phi.crypto import blind_index_pairs, current_keyring
from healthdb.phi.declaration import phi_fields
from healthdb.phi.masking import MaskedValue, Visibility, mask_value, visibility

__all__ = [
    "Access",
    "audit_rows",
    "forget_since",
    "install",
    "mark",
    "mask_touched",
    "pending",
    "take_pending",
]

_PENDING = "healthdb.phi.pending"
_TOUCHED = "healthdb.phi.touched"


@dataclass(frozen=True, slots=True)
class Access:
    """One audited touch: ``action`` on ``resource_type`` (a table, or a lane), its row id
    when known, and the PHI fields involved."""

    action: str
    resource_type: str
    resource_id: str | None
    fields: tuple[str, ...]
    model: type[Any] | None = None
    #: The audit row's ``reason`` (a non-PHI write names its changed fields there).
    note: str | None = None

    @classmethod
    def of(
        cls, action: str, model: type[Any], resource_id: str | None, fields: tuple[str, ...]
    ) -> Access:
        return cls(action, str(model.__table__.name), resource_id, fields, model)

    def masked_for(self, scope: ClinicScope) -> bool:
        """True when the scope's role sees some touched field only partly or not at all."""
        if self.model is None:
            return False
        kinds = phi_fields(self.model)
        return any(
            visibility(scope.role, kinds[name]) is not Visibility.FULL
            for name in self.fields
            if name in kinds
        )


def pending(session: Session) -> list[Access]:
    records: list[Access] = session.info.setdefault(_PENDING, [])
    return records


def take_pending(session: Session) -> list[Access]:
    """The recorded accesses, removing them (deduplicated, in order)."""
    records = session.info.pop(_PENDING, [])
    return list(dict.fromkeys(records))


def mark(session: Session) -> int:
    """A position in the session's recorded accesses, for :func:`forget_since`."""
    return len(pending(session))


def forget_since(session: Session, position: int, instances: Iterable[Any]) -> None:
    """Drop the reads of ``instances`` recorded after ``position``: rows a query fetched
    only to look ahead (a page's extra row) and never handed to anyone."""
    unseen = {(type(obj), _resource_id(obj)) for obj in instances}
    records = pending(session)
    records[position:] = [r for r in records[position:] if (r.model, r.resource_id) not in unseen]
    touched = _touched(session)
    touched[:] = [obj for obj in touched if (type(obj), _resource_id(obj)) not in unseen]


def _touched(session: Session) -> list[Any]:
    touched: list[Any] = session.info.setdefault(_TOUCHED, [])
    return touched


def _resource_id(instance: Any) -> str | None:
    # From the attributes, not the identity key: a new row has none yet in after_flush.
    key = inspect(instance).mapper.primary_key_from_instance(instance)
    if not key or any(part is None for part in key):
        return None
    return str(key[0]) if len(key) == 1 else ":".join(map(str, key))


def _on_load(session: Session, instance: Any) -> None:
    fields = phi_fields(type(instance))
    if not fields:
        return
    loaded = inspect(instance).dict
    names = tuple(sorted(name for name in fields if name in loaded))
    pending(session).append(Access.of("phi.read", type(instance), _resource_id(instance), names))
    _touched(session).append(instance)


def _on_select(state: ORMExecuteState) -> None:
    statement = state.statement
    if state.is_select:
        for model, names in _bare_phi_columns(getattr(statement, "column_descriptions", ())):
            pending(state.session).append(Access.of("phi.read", model, None, names))
        return
    if state.is_update or state.is_delete:
        target = getattr(state.bind_mapper, "class_", None)
        if isinstance(target, type) and phi_fields(target):
            action = "phi.update" if state.is_update else "phi.delete"
            pending(state.session).append(Access.of(action, target, None, ()))


def _bare_phi_columns(
    descriptions: Iterable[dict[str, Any]],
) -> list[tuple[type[Any], tuple[str, ...]]]:
    found: dict[type[Any], set[str]] = {}
    for description in descriptions:
        model, expr = description.get("entity"), description.get("expr")
        if not isinstance(model, type) or expr is model:
            continue  # whole entities are recorded when loaded, with their ids
        key = getattr(expr, "key", None)
        if isinstance(key, str) and key in phi_fields(model):
            found.setdefault(model, set()).add(key)
    return [(model, tuple(sorted(keys))) for model, keys in found.items()]


def _before_flush(session: Session, _ctx: UOWTransaction, _instances: object) -> None:
    for instance in (*session.new, *session.dirty):
        fields = phi_fields(type(instance))
        if not fields:
            continue
        state = inspect(instance)
        for name in fields:
            if isinstance(state.dict.get(name), MaskedValue):
                raise InvalidInput(f"refusing to store a masked value in {name}")
        _fill_blind_indexes(instance, state)


def _fill_blind_indexes(instance: Any, state: Any) -> None:
    for target, source in blind_index_pairs(type(instance)):
        if state.transient or state.pending or state.attrs[source].history.has_changes():
            value = state.dict.get(source)
            index = None if value is None else current_keyring().blind_index(str(value))
            setattr(instance, target, index)


def _changed(state: Any, fields: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(name for name in fields if state.attrs[name].history.has_changes()))


def _after_flush(session: Session, _ctx: UOWTransaction) -> None:
    records = pending(session)
    for instance in session.new:
        fields = phi_fields(type(instance))
        if fields:
            state = inspect(instance)
            names = tuple(sorted(n for n in fields if state.dict.get(n) is not None))
            records.append(Access.of("phi.create", type(instance), _resource_id(instance), names))
            _touched(session).append(instance)
    for instance in session.dirty:
        fields = phi_fields(type(instance))
        if not fields or not session.is_modified(instance):
            continue
        state = inspect(instance)
        deleted = "deleted_at" in state.attrs and state.attrs["deleted_at"].history.added
        action = "phi.delete" if deleted and state.dict.get("deleted_at") else "phi.update"
        records.append(
            Access.of(action, type(instance), _resource_id(instance), _changed(state, fields))
        )
    for instance in session.deleted:
        fields = phi_fields(type(instance))
        if fields:
            records.append(Access.of("phi.delete", type(instance), _resource_id(instance), ()))


def install(session_class: type[Session]) -> None:
    """Attach the PHI access recorder to ``session_class`` (idempotent)."""
    for name, listener in (
        ("loaded_as_persistent", _on_load),
        ("do_orm_execute", _on_select),
        ("before_flush", _before_flush),
        ("after_flush", _after_flush),
    ):
        if not event.contains(session_class, name, listener):
            event.listen(session_class, name, listener)


def audit_rows(
    records: Sequence[Access], scope: ClinicScope, *, reason: str | None = None
) -> list[dict[str, Any]]:
    """One unsealed audit row (column mapping) per access, stamped with the scope's who and
    why, for :func:`healthdb.internal.audit.append_rows`."""
    common = {
        "clinic_id": scope.clinic_id,
        "actor_id": scope.actor,
        "actor_role": scope.role.value,
        "purpose": scope.purpose[:64],
        "outcome": "success",
        "request_id": scope.request_id[:64],
        "client_addr": scope.client_addr,
        "reason": None if reason is None else reason[:500],
    }
    rows = []
    for record in records:
        action = record.action
        if action == "phi.read" and record.masked_for(scope):
            action = "phi.read_masked"
        rows.append(
            {
                **common,
                "action": action,
                "resource_type": record.resource_type,
                "resource_id": record.resource_id,
                "phi_fields": list(record.fields),
                **({} if record.note is None else {"reason": record.note[:500]}),
            }
        )
    return rows


def mask_touched(session: Session, scope: ClinicScope) -> None:
    """Mask, for the scope's role, the PHI of every instance this session loaded or created.

    Call it after commit: the committed values are replaced in place, so nothing is flushed
    and the caller receives only what the role may see.
    """
    for instance in session.info.pop(_TOUCHED, []):
        for name, kind in phi_fields(type(instance)).items():
            seen = visibility(scope.role, kind)
            if seen is Visibility.FULL:
                continue
            state = inspect(instance)
            if name in state.dict:
                set_committed_value(instance, name, mask_value(kind, state.dict[name], seen))
