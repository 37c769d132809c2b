"""FHIR search on Patient: ``family``, ``given``, ``birthdate`` and ``identifier`` parsed into
one :func:`healthdb.repositories.patient_views.search_demographics` call, and the
``searchset`` Bundle that pages through it with ``next`` links.

Semantics (FHIR R4 search, the subset this service supports):

* ``family`` / ``given``: case-insensitive "starts with" (``family:exact``: equals);
* ``birthdate``: a date of precision year, month or day with an optional prefix ``eq`` (the
  default: within that year, month or day), ``lt``, ``le``, ``gt``, ``ge``, ``sa``, ``eb``;
  repeated parameters combine with AND;
* ``identifier``: ``system|value``, ``|value`` or ``value``, matched against the medical
  record number; an SSN is refused in a URL (proxies and browsers keep URLs), an unknown
  system matches nothing;
* ``_count`` (page size) and ``_cursor`` (the opaque position ``next`` links carry).

Unknown parameters are ignored (and left out of the ``self`` link, as the specification
asks) unless the request says ``Prefer: handling=strict``; an unsupported modifier, prefix
or comma-separated list is always a 400.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from healthdb.repositories import MAX_LIMIT, Page, PatientRecord
from healthdb.repositories.pagination import MAX_CURSOR_LENGTH
from healthdb.repositories.patients import MAX_NAME_PREFIX
from healthdb_api.fhir.mapping import SSN_SYSTEM, to_resource
from healthdb_api.fhir.outcome import FhirError

__all__ = ["SearchQuery", "parse_search", "searchset"]

_DATE = re.compile(r"(eq|ne|gt|lt|ge|le|sa|eb|ap)?(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_IGNORED = frozenset({"_format", "_pretty"})
_MAX_IDENTIFIER = 200


@dataclass(slots=True)
class SearchQuery:
    """A parsed search: the criteria, the page, and whether it can match anything at all."""

    family: str | None = None
    family_exact: bool = False
    given: str | None = None
    born_from: dt.date | None = None
    born_before: dt.date | None = None
    mrn: str | None = None
    count: int = 20
    cursor: str | None = None
    matches_nothing: bool = False
    applied: list[tuple[str, str]] = field(default_factory=list)


def parse_search(
    params: Sequence[tuple[str, str]], *, page_size: int, mrn_system: str, strict: bool
) -> SearchQuery:
    """The query named by ``params`` (raises :class:`FhirError` 400 for what it refuses)."""
    query = SearchQuery(count=page_size)
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if name in ("family", "given"):
            _name(query, name, modifier, value)
        elif name == "birthdate" and not modifier:
            _birthdate(query, value)
        elif name == "identifier" and not modifier:
            _identifier(query, value, mrn_system)
        elif name == "_count" and not modifier:
            query.count = _count(value)
            continue  # paging, not a criterion: the links add it themselves
        elif name == "_cursor" and not modifier:
            query.cursor = _cursor(value)
            continue
        elif name in ("family", "given", "birthdate", "identifier", "_count", "_cursor"):
            raise _bad("this modifier is not supported", name)
        elif name in _IGNORED or not strict:
            continue
        else:
            # The parameter's name is the client's input: not echoed (it could be PHI).
            raise _bad("unknown search parameter (Prefer: handling=strict)")
        query.applied.append((raw_name, value))
    if query.born_from and query.born_before and query.born_from >= query.born_before:
        query.matches_nothing = True
    return query


def _bad(message: str, expression: str | None = None) -> FhirError:
    return FhirError(400, message, expression=expression)


def _term(value: str, name: str) -> str:
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise _bad("must not contain control characters", name)
    term = unicodedata.normalize("NFC", value).strip()
    if not term or len(term) > MAX_NAME_PREFIX or "," in term:
        raise _bad(f"one value of 1-{MAX_NAME_PREFIX} characters (no comma lists)", name)
    return term


def _name(query: SearchQuery, name: str, modifier: str, value: str) -> None:
    if modifier and not (name == "family" and modifier == "exact"):
        raise _bad("this modifier is not supported", name)
    if getattr(query, name) is not None:
        raise _bad(f"{name} may be given once", name)
    setattr(query, name, _term(value, name))
    if name == "family":
        query.family_exact = modifier == "exact"


def _birthdate(query: SearchQuery, value: str) -> None:
    match = _DATE.fullmatch(value.strip())
    if match is None:
        raise _bad("birthdate must be [prefix]YYYY, YYYY-MM or YYYY-MM-DD", "birthdate")
    prefix, year, month, day = match.groups()
    try:
        low, high = _period(int(year), month, day)
    except ValueError:
        raise _bad("birthdate is not a calendar date", "birthdate") from None
    prefix = prefix or "eq"
    if prefix in ("ne", "ap"):
        raise _bad(f"birthdate prefix {prefix} is not supported", "birthdate")
    lower = {"eq": low, "ge": low, "gt": high, "sa": high}.get(prefix)
    upper = {"eq": high, "le": high, "lt": low, "eb": low}.get(prefix)
    if lower is not None:
        query.born_from = max(lower, query.born_from or lower)
    if upper is not None:
        query.born_before = min(upper, query.born_before or upper)


def _period(year: int, month: str | None, day: str | None) -> tuple[dt.date, dt.date]:
    """The half-open range of days a date of that precision covers."""
    if month is None:
        return dt.date(year, 1, 1), dt.date(year + 1, 1, 1)
    first = dt.date(year, int(month), 1)
    if day is None:
        return first, first + dt.timedelta(days=calendar.monthrange(year, first.month)[1])
    exact = dt.date(year, first.month, int(day))
    return exact, exact + dt.timedelta(days=1)


def _split_token(value: str) -> tuple[str | None, str]:
    """``system|value`` with FHIR's escapes (``\\|``, ``\\,``, ``\\$``, ``\\\\``)."""
    parts: list[str] = [""]
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            parts[-1] += next(chars, "")
        elif ch == "|" and len(parts) == 1:
            parts.append("")
        elif ch == ",":
            raise _bad("one identifier per parameter (no comma lists)", "identifier")
        else:
            parts[-1] += ch
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def _identifier(query: SearchQuery, value: str, mrn_system: str) -> None:
    if len(value) > _MAX_IDENTIFIER:
        raise _bad(f"identifier must be at most {_MAX_IDENTIFIER} characters", "identifier")
    system, code = _split_token(value)
    if system == SSN_SYSTEM:
        raise FhirError(
            400,
            "an SSN is never accepted in a URL (proxies and browsers keep URLs); "
            "use POST /api/v1/patients/ssn-lookup",
            code="security",
            expression="identifier",
        )
    if system not in (None, "", mrn_system) or not code:
        query.matches_nothing = True  # no patient carries an identifier of that system
        return
    if query.mrn is not None and query.mrn != code:
        query.matches_nothing = True
    query.mrn = unicodedata.normalize("NFC", code).strip()


def _count(value: str) -> int:
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise _bad(f"_count must be an integer in 1..{MAX_LIMIT}", "_count")
    return int(value)


def _cursor(value: str) -> str:
    if len(value) > MAX_CURSOR_LENGTH:
        raise _bad("invalid _cursor", "_cursor")
    return value


def searchset(
    page: Page[PatientRecord], query: SearchQuery, *, base: str, mrn_system: str
) -> dict[str, Any]:
    """The ``searchset`` Bundle of one page, with ``self`` and (if more) ``next`` links."""
    paging = [("_count", str(query.count))]
    this = [*query.applied, *paging, *([("_cursor", query.cursor)] if query.cursor else [])]
    links = [{"relation": "self", "url": f"{base}/Patient?{urlencode(this)}"}]
    if page.next_cursor is not None:
        after = [*query.applied, *paging, ("_cursor", page.next_cursor)]
        links.append({"relation": "next", "url": f"{base}/Patient?{urlencode(after)}"})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base}/Patient/{record.id}",
                "resource": to_resource(record, mrn_system=mrn_system),
                "search": {"mode": "match"},
            }
            for record in page.items
        ],
    }
