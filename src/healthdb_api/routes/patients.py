"""Patients routes (``/api/v1/patients``).

Every handler runs inside the caller's clinic scope, so a patient of another clinic is
invisible: it answers 404 with exactly the body of a patient that never existed.

Roles: every staff role may register, read, list and edit patients; receptionists never
see ``ssn`` or ``notes`` (they come back ``null``) and may not write ``notes`` (403).
Deleting a patient (a soft delete) is reserved to clinical staff and clinic admins.

Concurrency: responses carry ``ETag: "<version>"``. ``PATCH`` requires the version the
client last read, as ``If-Match`` (or a ``version`` field in the body): without it 428, a
stale one 409. ``DELETE`` accepts an optional ``If-Match``.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response, status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import ConflictError, NotFound, QueryOptions, Role
from healthdb.models import Patient
from healthdb.repositories import MAX_LIMIT, PatientRepository
from healthdb.repositories.pagination import DEFAULT_LIMIT, MAX_CURSOR_LENGTH, Page
from healthdb.repositories.patients import MAX_NAME_PREFIX
from healthdb_api.deps import CurrentPrincipal, Db, Principal, require_roles, scope
from healthdb_api.errors import ApiError
from healthdb_api.schemas import PatientCreate, PatientOut, PatientPage, PatientUpdate

router = APIRouter(prefix="/api/v1/patients", tags=["patients"])

#: Roles allowed to read ``ssn`` and ``notes`` and to write ``notes``.
CLINICAL_ROLES = frozenset({Role.CLINIC_ADMIN, Role.DOCTOR, Role.NURSE})
#: Fields hidden from (and, for ``notes``, not writable by) the other roles.
RESTRICTED_FIELDS = ("ssn", "notes")
PURPOSE = "patient_care"

IfMatch = Annotated[
    str | None,
    Header(
        max_length=64,
        description='The patient\'s current version, as returned in its ETag (`"3"` or `3`)',
    ),
]
Deleter = Annotated[Principal, Depends(require_roles(Role.CLINIC_ADMIN, Role.DOCTOR, Role.NURSE))]


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


def present(patient: Patient, role: Role) -> PatientOut:
    """The response body for ``role``: restricted fields nulled for non-clinical roles."""
    out = PatientOut.model_validate(patient)
    if role not in CLINICAL_ROLES:
        out = out.model_copy(update=dict.fromkeys(RESTRICTED_FIELDS))
    return out


def forbid_notes(principal: Principal) -> None:
    if principal.role not in CLINICAL_ROLES:
        raise ApiError(403, "forbidden", "your role may not write clinical notes")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PatientOut,
    responses={409: {"description": "a patient with this MRN already exists"}},
)
async def create_patient(
    body: PatientCreate, principal: CurrentPrincipal, db: Db, response: Response
) -> PatientOut:
    if body.notes is not None:
        forbid_notes(principal)

    async def op(session: AsyncSession) -> Patient:
        return await PatientRepository(session).add(Patient(**body.model_dump()))

    async with scope(db, principal, purpose=PURPOSE):
        try:
            patient = await db.execute_write(op, QueryOptions.for_phi("patients.create"))
        except ConflictError:
            raise duplicate_mrn() from None
    response.headers["ETag"] = etag(patient.version)
    response.headers["Location"] = f"{router.prefix}/{patient.id}"
    return present(patient, principal.role)


@router.get("/{patient_id}", response_model=PatientOut, responses={404: {}})
async def get_patient(
    patient_id: uuid.UUID, principal: CurrentPrincipal, db: Db, response: Response
) -> PatientOut:
    async def op(session: AsyncSession) -> Patient | None:
        return await PatientRepository(session).get(patient_id)

    async with scope(db, principal, purpose=PURPOSE):
        patient = await db.execute_read(op, QueryOptions.for_phi("patients.get"))
    if patient is None:
        raise not_found()
    response.headers["ETag"] = etag(patient.version)
    return present(patient, principal.role)


@router.get("", response_model=PatientPage)
async def list_patients(
    principal: CurrentPrincipal,
    db: Db,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_LENGTH)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    name: Annotated[
        str | None,
        Query(max_length=MAX_NAME_PREFIX, description="prefix of the given or family name"),
    ] = None,
    mrn: Annotated[str | None, Query(max_length=64)] = None,
    date_of_birth: Annotated[dt.date | None, Query()] = None,
    sort: Annotated[
        str,
        Query(max_length=32, description="a sortable field; prefix with - for descending"),
    ] = "family_name",
) -> PatientPage:
    field = sort.removeprefix("-")
    if field not in PatientRepository.sortable:
        allowed = ", ".join(sorted(PatientRepository.sortable))
        raise ApiError(
            422,
            "validation_error",
            f"unknown sort field; allowed: {allowed} (prefix - for descending)",
            details=[
                {
                    "loc": ["query", "sort"],
                    "msg": f"must be one of: {allowed}",
                    "type": "enum",
                    "allowed": sorted(PatientRepository.sortable),
                }
            ],
        )

    search_name = _search_term(name, "name")
    search_mrn = _search_term(mrn, "mrn")

    async def op(session: AsyncSession) -> Page[Patient]:
        return await PatientRepository(session).search(
            name=search_name,
            mrn=search_mrn,
            date_of_birth=date_of_birth,
            cursor=cursor,
            limit=limit,
            sort=field,
            descending=sort.startswith("-"),
        )

    async with scope(db, principal, purpose=PURPOSE):
        page = await db.execute_read(op, QueryOptions.for_phi("patients.search"))
    return PatientPage(
        items=[present(p, principal.role) for p in page.items], next_cursor=page.next_cursor
    )


@router.patch(
    "/{patient_id}",
    response_model=PatientOut,
    responses={404: {}, 409: {}, 428: {"description": "If-Match (or version) is required"}},
)
async def update_patient(
    patient_id: uuid.UUID,
    body: PatientUpdate,
    principal: CurrentPrincipal,
    db: Db,
    response: Response,
    if_match: IfMatch = None,
) -> PatientOut:
    header_version = parse_if_match(if_match)
    if header_version is not None and body.version is not None and header_version != body.version:
        raise ApiError(422, "validation_error", "If-Match and the body's version disagree")
    expected = header_version if header_version is not None else body.version
    if expected is None and not (if_match is not None and if_match.strip() == "*"):
        raise ApiError(
            428,
            "precondition_required",
            "updating a patient needs the version you last read: send it as an If-Match "
            'header (the ETag, e.g. If-Match: "3") or as "version" in the body',
        )
    changes = body.changes()
    if "notes" in changes:
        forbid_notes(principal)

    async def op(session: AsyncSession) -> Patient:
        if "mrn" in changes:
            # Soft-deleted patients keep their MRN, so look past the repository's filter.
            taken = select(Patient.id).where(
                Patient.mrn == changes["mrn"], Patient.id != patient_id
            )
            if (await session.execute(taken.limit(1))).first() is not None:
                raise duplicate_mrn()
        return await PatientRepository(session).update(
            patient_id, expected_version=expected, **changes
        )

    async with scope(db, principal, purpose=PURPOSE):
        try:
            patient = await db.execute_write(op, QueryOptions.for_phi("patients.update"))
        except NotFound:
            raise not_found() from None
        except ConflictError:
            raise ApiError(
                409,
                "version_conflict",
                "the patient was modified by someone else; reload it and retry",
            ) from None
    response.headers["ETag"] = etag(patient.version)
    return present(patient, principal.role)


@router.delete(
    "/{patient_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={404: {}, 409: {}},
)
async def delete_patient(
    patient_id: uuid.UUID, principal: Deleter, db: Db, if_match: IfMatch = None
) -> Response:
    expected = parse_if_match(if_match)

    async def op(session: AsyncSession) -> None:
        await PatientRepository(session).soft_delete(patient_id, expected_version=expected)

    async with scope(db, principal, purpose=PURPOSE):
        try:
            await db.execute_write(op, QueryOptions.for_phi("patients.delete"))
        except NotFound:
            raise not_found() from None
        except ConflictError:
            raise ApiError(
                409,
                "version_conflict",
                "the patient was modified by someone else; reload it and retry",
            ) from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _search_term(value: str | None, field: str) -> str | None:
    """A search parameter in the form values are stored in: NFC, trimmed, single-line."""
    if value is None:
        return None
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        message = "must not contain control characters"
        raise ApiError(
            422,
            "validation_error",
            "request validation failed",
            details=[{"loc": ["query", field], "msg": message, "type": "value_error"}],
        )
    return unicodedata.normalize("NFC", value).strip()
