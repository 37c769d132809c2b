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

__all__ = [
    "BY_ID",
    "MAX_EXPORT_BATCH",
    "PatientRecord",
    "by_id",
    "export_batch",
    "search",
    "search_demographics",
]


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


#: Largest page :func:`export_batch` reads at once (one bulk export file).
MAX_EXPORT_BATCH = 5000
_CREATION = "created_at"


def search_demographics(
    *,
    family: str | None = None,
    family_exact: bool = False,
    given: str | None = None,
    born_from: dt.date | None = None,
    born_before: dt.date | None = None,
    mrn: str | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Read[Page[PatientRecord]]:
    """Patients matching every given criterion, one page in creation order (``created_at``,
    id), so a cursor never carries a name.

    ``family`` and ``given`` are case-insensitive prefixes of the family and given name,
    matched literally (``family_exact``: the family name exactly, case included);
    ``born_from`` is inclusive, ``born_before`` exclusive; ``mrn`` matches exactly."""
    params: dict[str, Any] = {}
    for key, value in (("family", family), ("given", given)):
        if value is None:
            continue
        if len(value) > MAX_NAME_PREFIX:
            raise InvalidInput(f"{key} must be at most {MAX_NAME_PREFIX} characters")
        exact = key == "family" and family_exact
        params[key] = value if exact else escape_like(value) + "%"
    for key, day in (("born_from", born_from), ("born_before", born_before)):
        if day is None:
            continue
        if isinstance(day, dt.datetime) or not isinstance(day, dt.date):
            raise InvalidInput(f"{key} must be a date")
        params[key] = day
    if mrn is not None:
        params["mrn"] = mrn
    return _creation_page(params, cursor, check_limit(limit), family_exact=family_exact)


def export_batch(
    *, cursor: str | None = None, limit: int = 1000, changed_since: dt.datetime | None = None
) -> Read[Page[PatientRecord]]:
    """The next ``limit`` (at most :data:`MAX_EXPORT_BATCH`) patients in creation order,
    optionally only those updated at or after ``changed_since`` (timezone-aware): one file
    of a bulk export, masked and audited like any other read."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_EXPORT_BATCH:
        raise InvalidInput(f"limit must be an integer in 1..{MAX_EXPORT_BATCH}")
    params: dict[str, Any] = {}
    if changed_since is not None:
        if not isinstance(changed_since, dt.datetime) or changed_since.tzinfo is None:
            raise InvalidInput("changed_since must be a timezone-aware datetime")
        params["changed_since"] = changed_since
    return _creation_page(params, cursor, limit, family_exact=False)


def _creation_page(
    params: dict[str, Any], cursor: str | None, limit: int, *, family_exact: bool
) -> Read[Page[PatientRecord]]:
    if cursor is not None:
        position = decode_cursor(
            cursor,
            sort=_CREATION,
            descending=False,
            key_type=PatientRepository.sort_type(_CREATION),
        )
        params["after_key"], params["after_id"] = position.key, position.id
    view = _creation_view(frozenset(params), family_exact)

    def page(records: list[PatientRecord], more: bool) -> Page[PatientRecord]:
        if not more:
            return Page(items=records, next_cursor=None)
        last = records[-1]
        token = encode_cursor(Cursor(_CREATION, False, last.created_at, last.id))
        return Page(items=records, next_cursor=token)

    return view.page(limit, page, **params, limit=limit + 1)


@functools.lru_cache(maxsize=128)
def _creation_view(names: frozenset[str], family_exact: bool) -> View[PatientRecord]:
    """One view per combination of criteria (at most a few dozen), built once."""
    table = _PATIENTS
    statement = select(*_COLUMNS).where(_VISIBLE)
    if "family" in names:
        family = bindparam("family", type_=table.c.family_name.type)
        statement = statement.where(
            table.c.family_name == family
            if family_exact
            else func.lower(table.c.family_name).like(func.lower(family), escape="\\")
        )
    if "given" in names:
        pattern = func.lower(bindparam("given"))
        statement = statement.where(func.lower(table.c.given_name).like(pattern, escape="\\"))
    if "born_from" in names:
        statement = statement.where(table.c.date_of_birth >= bindparam("born_from"))
    if "born_before" in names:
        statement = statement.where(table.c.date_of_birth < bindparam("born_before"))
    if "mrn" in names:
        statement = statement.where(table.c.mrn == bindparam("mrn"))
    if "changed_since" in names:
        since = bindparam("changed_since", type_=table.c.updated_at.type)
        statement = statement.where(table.c.updated_at >= since)
    column = table.c[_CREATION]
    if "after_key" in names:
        key = bindparam("after_key", type_=column.type)
        last = bindparam("after_id", type_=table.c.id.type)
        statement = statement.where(or_(column > key, and_(column == key, table.c.id > last)))
    statement = statement.order_by(column.asc(), table.c.id.asc())
    statement = statement.limit(bindparam("limit", type_=Integer()))
    return View(statement, PatientRecord, name="patients.search_demographics")
