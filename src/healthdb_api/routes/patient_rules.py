"""The rules of a patient request, shared by the patients (and appointments) routes: the
one 404, ETag / If-Match handling, search-term normalisation, and the library's masking
policy applied to what a role may write.

Nothing here keeps its own list of sensitive fields: which fields are PHI, and of which
kind, comes from the column declarations (:func:`healthdb.phi.phi_fields`), and what a
role may see or write from :data:`healthdb.phi.POLICY`.
"""

from __future__ import annotations

import unicodedata
from typing import Any, NoReturn

from fastapi import Response
from pydantic import TypeAdapter

from healthdb import Role
from healthdb.models import Patient
from healthdb.phi import Visibility, phi_fields, visibility
from healthdb.phi.masking import may_write
from healthdb.repositories import Page, PatientRecord
from healthdb_api.deps import Principal
from healthdb_api.errors import ApiError
from healthdb_api.fields import refusal
from healthdb_api.schemas import PatientOut

__all__ = [
    "PHI_KINDS",
    "check_writable",
    "duplicate_mrn",
    "etag",
    "exported_fields",
    "not_found",
    "page_json",
    "parse_if_match",
    "patient_json",
    "present",
    "refuse_masked",
    "search_term",
    "ssn_in_url",
]

#: ``{attribute: PHI kind}`` of a patient: the policy is looked up per kind.
PHI_KINDS = phi_fields(Patient)


def not_found() -> ApiError:
    """The one 404 of this resource: missing, deleted and foreign patients look the same."""
    return ApiError(404, "not_found", "patient not found")


def duplicate_mrn() -> ApiError:
    return ApiError(409, "duplicate_mrn", "a patient with this MRN already exists in the clinic")


def etag(version: int) -> str:
    return f'"{version}"'


def parse_if_match(value: str | None) -> int | None:
    """The version named by an ``If-Match`` header; ``None`` when absent or ``*``.

    Accepts a strong or weak entity tag (``"3"``, ``W/"3"``) or a bare integer.
    """
    if value is None or value.strip() == "*":
        return None
    tag = value.strip()
    tag = tag.removeprefix("W/")
    if len(tag) >= 2 and tag[0] == tag[-1] == '"':
        tag = tag[1:-1]
    if not tag.isascii() or not tag.isdigit() or not 1 <= len(tag) <= 18:
        raise ApiError(
            422,
            "validation_error",
            'If-Match must be the entity tag of one version, e.g. "3"',
            details=[{"loc": ["header", "if-match"], "msg": "invalid entity tag", "type": "etag"}],
        )
    return int(tag)


def present(patient: Patient | PatientRecord) -> PatientOut:
    """The response body. The library has already masked ``patient`` for the scope's role
    (after commit, or as it read the record), so this only changes the shape."""
    return PatientOut.model_validate(patient)


#: Records serialise straight to the JSON of :class:`PatientOut` (same fields, same order,
#: same types; a unit test holds them together): no model is built per response.
_RECORD = TypeAdapter(PatientRecord)
_PAGE = TypeAdapter(Page[PatientRecord])


def patient_json(record: PatientRecord) -> Response:
    """``record`` as the body of a 200, with its ``ETag``."""
    return Response(
        _RECORD.dump_json(record),
        media_type="application/json",
        headers={"ETag": etag(record.version)},
    )


def page_json(page: Page[PatientRecord]) -> Response:
    """A page of records as the body of :class:`~healthdb_api.schemas.PatientPage`."""
    return Response(_PAGE.dump_json(page), media_type="application/json")


def check_writable(principal: Principal, fields: dict[str, Any]) -> None:
    """403 for a field the role may not see at all; 422 for a masked value sent back.

    Clearing a hidden field (``null``) is a write too: a receptionist may not erase notes.
    """
    hidden = sorted(
        name
        for name in fields
        if name in PHI_KINDS and not may_write(principal.role, PHI_KINDS[name])
    )
    if hidden:
        raise ApiError(403, "forbidden", f"your role may not write: {', '.join(hidden)}")
    refuse_masked(fields.get("ssn"), ["body", "ssn"])


def refuse_masked(ssn: object, loc: list[str]) -> None:
    """A masked SSN (``***-**-1234``) sent back would overwrite the real one: refuse it.

    The library refuses its own masked values, but over HTTP they arrive as plain strings.
    """
    if isinstance(ssn, str) and "*" in ssn:
        raise ApiError(
            422,
            "validation_error",
            "ssn looks masked; send the full SSN or leave the field out",
            details=[{"loc": loc, "msg": "masked value", "type": "masked_value"}],
        )


def exported_fields(role: Role) -> list[str]:
    """The PHI fields an export hands ``role`` in full or in part (the audited fields)."""
    return sorted(
        name for name, kind in PHI_KINDS.items() if visibility(role, kind) is not Visibility.NONE
    )


def search_term(value: str | None, field: str) -> str | None:
    """A search parameter in the form values are stored in: NFC, trimmed, single-line."""
    if value is None:
        return None
    message = refusal(value)  # the one text rule (healthdb_api.fields)
    if message is not None:
        raise ApiError(
            422,
            "validation_error",
            "request validation failed",
            details=[{"loc": ["query", field], "msg": message, "type": "value_error"}],
        )
    return unicodedata.normalize("NFC", value).strip()


def ssn_in_url() -> NoReturn:
    """422 for ``GET ?ssn=``: a URL is logged by proxies, kept in browser history and sent
    in Referer headers, so an SSN must travel in a request body instead. Refused rather
    than ignored, so that an old client is not silently answered with an unfiltered list."""
    raise ApiError(
        422,
        "validation_error",
        'ssn must not be sent in a URL; POST {"ssn": "..."} to /api/v1/patients/ssn-lookup',
        details=[{"loc": ["query", "ssn"], "msg": "not accepted here", "type": "ssn_in_url"}],
    )
