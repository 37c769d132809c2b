"""Patient reads without the ORM: :class:`PatientRecord` and the views that fill it.

``db.execute_read(patient_views.by_id(pid), QueryOptions.for_phi())`` returns the same
patient :meth:`PatientRepository.get` would, as a frozen record, masked for the caller's
role and audited (one ``phi.read`` row per patient returned), in a fraction of the time;
:func:`search` pages like :meth:`PatientRepository.search` (same cursors, same order, same
look-ahead row that is neither returned nor audited). Writes stay with the repository.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Integer, Table, and_, bindparam, func, or_, select

from healthdb.context import as_uuid
from healthdb.errors import InvalidInput
from healthdb.models import Patient
from healthdb.repositories.pagination import (
    DEFAULT_LIMIT,
    Cursor,
    Page,
    check_limit,
    decode_cursor,
    encode_cursor,
)
from healthdb.repositories.patients import MAX_NAME_PREFIX, PatientRepository, escape_like
from healthdb.view import Read, View

__all__ = ["BY_ID", "PatientRecord", "by_id", "search"]


@dataclass(frozen=True, slots=True)
class PatientRecord:
    """A patient as read for a caller (the columns a client may be shown, no tenancy or
    bookkeeping columns). PHI fields arrive masked for the caller's role."""

    id: uuid.UUID
    mrn: str
    given_name: str
    family_name: str
    date_of_birth: dt.date
    sex: str
    phone: str | None
    email: str | None
    address: str | None
    ssn: str | None
    notes: str | None
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


_PATIENTS = cast(Table, Patient.__table__)
_COLUMNS = [_PATIENTS.c[name] for name in PatientRecord.__dataclass_fields__]
_VISIBLE = _PATIENTS.c.deleted_at.is_(None)

BY_ID: View[PatientRecord] = View(
    select(*_COLUMNS).where(_PATIENTS.c.id == bindparam("id"), _VISIBLE),
    PatientRecord,
    name="patients.by_id",
)


def by_id(patient_id: uuid.UUID | str) -> Read[PatientRecord | None]:
    """The visible patient with this id, or ``None`` (soft-deleted rows are hidden)."""
    return BY_ID.one(id=as_uuid(patient_id, "patient_id"))


def search(
    *,
    name: str | None = None,
    mrn: str | None = None,
    date_of_birth: dt.date | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
    sort: str = "family_name",
    descending: bool = False,
) -> Read[Page[PatientRecord]]:
    """Patients matching every given criterion, one page ordered by (``sort``, id).

    ``name`` is a case-insensitive prefix of the given *or* family name, matched literally;
    ``mrn`` and ``date_of_birth`` match exactly; ``sort`` is one of
    :attr:`PatientRepository.sortable`."""
    limit = check_limit(limit)
    if sort not in PatientRepository.sortable:
        allowed = ", ".join(sorted(PatientRepository.sortable))
        raise InvalidInput(f"unknown sort field; allowed: {allowed}")
    params: dict[str, Any] = {"limit": limit + 1}
    prefix = name.strip() if name is not None else ""
    if len(prefix) > MAX_NAME_PREFIX:
        raise InvalidInput(f"name must be at most {MAX_NAME_PREFIX} characters")
    if prefix:
        params["name_pattern"] = escape_like(prefix) + "%"
    if mrn is not None:
        params["mrn"] = mrn
    if date_of_birth is not None:
        if isinstance(date_of_birth, dt.datetime) or not isinstance(date_of_birth, dt.date):
            raise InvalidInput("date_of_birth must be a date")
        params["date_of_birth"] = date_of_birth
    if cursor is not None:
        position = decode_cursor(
            cursor, sort=sort, descending=descending, key_type=PatientRepository.sort_type(sort)
        )
        params["after_key"], params["after_id"] = position.key, position.id
    view = _search_view(
        bool(prefix),
        mrn is not None,
        date_of_birth is not None,
        sort,
        descending,
        cursor is not None,
    )

    def page(records: list[PatientRecord], more: bool) -> Page[PatientRecord]:
        if not more:
            return Page(items=records, next_cursor=None)
        last = records[-1]
        token = encode_cursor(Cursor(sort, descending, getattr(last, sort), last.id))
        return Page(items=records, next_cursor=token)

    return view.page(limit, page, **params)


@functools.lru_cache(maxsize=256)
def _search_view(
    name: bool, mrn: bool, dob: bool, sort: str, descending: bool, after: bool
) -> View[PatientRecord]:
    """One view per shape of search (at most a few hundred), built and compiled once."""
    table = _PATIENTS
    statement = select(*_COLUMNS).where(_VISIBLE)
    if name:
        # lower() on both sides in SQL, as the repository does (see its _name_prefix).
        pattern = func.lower(bindparam("name_pattern"))
        statement = statement.where(
            or_(
                func.lower(table.c.given_name).like(pattern, escape="\\"),
                func.lower(table.c.family_name).like(pattern, escape="\\"),
            )
        )
    if mrn:
        statement = statement.where(table.c.mrn == bindparam("mrn"))
    if dob:
        statement = statement.where(table.c.date_of_birth == bindparam("date_of_birth"))
    column = table.c[sort]
    if after:
        key = bindparam("after_key", type_=column.type)
        last = bindparam("after_id", type_=table.c.id.type)
        if descending:
            statement = statement.where(or_(column < key, and_(column == key, table.c.id < last)))
        else:
            statement = statement.where(or_(column > key, and_(column == key, table.c.id > last)))
    order = (column.desc(), table.c.id.desc()) if descending else (column.asc(), table.c.id.asc())
    statement = statement.order_by(*order).limit(bindparam("limit", type_=Integer()))
    return View(statement, PatientRecord, name="patients.search")
