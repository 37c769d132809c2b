"""Patients routes (``/api/v1/patients``).

Every handler runs inside the caller's clinic scope, so a patient of another clinic is
invisible: it answers 404 with exactly the body of a patient that never existed.

Roles follow the library's policy (:data:`healthdb.phi.POLICY`): responses arrive masked
for the caller's role (receptionists and nurses see ``ssn`` as ``***-**-1234``;
receptionists and clinic admins see ``notes`` as ``null``), and writing a field the role
may not see at all is 403 (see :mod:`healthdb_api.routes.patient_rules`). Deleting is for
clinical staff and clinic admins; exporting for clinic admins and doctors.

Audit: the library records every PHI read, create, update and delete in the same
transaction. ``GET /export`` is a bounded page (``next_cursor`` for the rest) audited as
ONE ``phi.export`` row per page (count in ``reason``), written in the reading transaction,
on top of the automatic per-row reads.

Concurrency: responses carry ``ETag: "<version>"``. ``PATCH`` requires the version the
client last read, as ``If-Match`` (or a ``version`` field in the body): without it 428, a
stale one 409. ``DELETE`` accepts an optional ``If-Match``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response, status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import ConflictError, DatabaseService, NotFound, QueryOptions, Role, audit_log
from healthdb.models import Patient
from healthdb.phi import PhiKind, Visibility, visibility
from healthdb.repositories import MAX_LIMIT, PatientRepository, patient_commands, patient_views
from healthdb.repositories.pagination import DEFAULT_LIMIT, MAX_CURSOR_LENGTH, Page
from healthdb.repositories.patients import MAX_NAME_PREFIX
from healthdb_api.deps import CurrentPrincipal, Db, Principal, require_roles, scope
from healthdb_api.errors import ApiError
from healthdb_api.routes.patient_rules import (
    check_writable,
    duplicate_mrn,
    exported_fields,
    not_found,
    page_json,
    patient_json,
    present,
    refuse_masked,
    search_term,
    ssn_in_url,
)

# Re-exported: the appointments routes share the ETag handling.
from healthdb_api.routes.patient_rules import etag as etag
from healthdb_api.routes.patient_rules import parse_if_match as parse_if_match
from healthdb_api.schemas import (
    PatientCreate,
    PatientOut,
    PatientPage,
    PatientUpdate,
    SsnLookup,
)

router = APIRouter(prefix="/api/v1/patients", tags=["patients"])

PURPOSE = "patient_care"
EXPORT_PURPOSE = "export"

IfMatch = Annotated[
    str | None,
    Header(
        max_length=64,
        description='The patient\'s current version, as returned in its ETag (`"3"` or `3`)',
    ),
]
Deleter = Annotated[Principal, Depends(require_roles(Role.CLINIC_ADMIN, Role.DOCTOR, Role.NURSE))]
Exporter = Annotated[Principal, Depends(require_roles(Role.CLINIC_ADMIN, Role.DOCTOR))]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PatientOut,
    responses={409: {"description": "a patient with this MRN already exists"}},
)
async def create_patient(
    body: PatientCreate, principal: CurrentPrincipal, db: Db, response: Response
) -> PatientOut:
    check_writable(principal, body.model_dump(exclude_none=True))

    async def op(session: AsyncSession) -> Patient:
        return await PatientRepository(session).add(Patient(**body.model_dump()))

    async with scope(db, principal, purpose=PURPOSE):
        try:
            patient = await db.execute_write(op, QueryOptions.for_phi("patients.create"))
        except ConflictError:
            raise duplicate_mrn() from None
    response.headers["ETag"] = etag(patient.version)
    response.headers["Location"] = f"{router.prefix}/{patient.id}"
    return present(patient)


@router.get("/export", response_model=PatientPage, responses={403: {}})
async def export_patients(
    principal: Exporter,
    db: Db,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_LENGTH)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
) -> PatientPage:
    """Export the clinic's patients, oldest first, masked for the caller's role.

    A bounded page per request (walk ``next_cursor`` for the rest), so no transaction stays
    open while a client reads a long stream. Each page is audited as one ``phi.export`` row
    written in the transaction that read it, so an export that is not recorded never
    happened; every patient on the page also gets its automatic per-row read.
    """

    async def op(session: AsyncSession) -> Page[Patient]:
        page = await PatientRepository(session).list(cursor=cursor, limit=limit, sort="created_at")
        await audit_log.record(
            session,
            "phi.export",
            "patients",
            phi_fields=exported_fields(principal.role),
            reason=f"exported {len(page.items)} patient(s)",
        )
        return page

    async with scope(db, principal, purpose=EXPORT_PURPOSE):
        # A write: the export row commits with the read or not at all.
        page = await db.execute_write(op, QueryOptions.for_phi("patients.export"))
    return PatientPage(items=[present(p) for p in page.items], next_cursor=page.next_cursor)


@router.get("/{patient_id}", response_model=PatientOut, responses={404: {}})
async def get_patient(patient_id: uuid.UUID, principal: CurrentPrincipal, db: Db) -> Response:
    async with scope(db, principal, purpose=PURPOSE):
        patient = await db.execute_read(
            patient_views.by_id(patient_id), QueryOptions.for_phi("patients.get")
        )
    if patient is None:
        raise not_found()
    return patient_json(patient)


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
    ssn: Annotated[
        str | None,
        Query(
            include_in_schema=False,
            description="refused: an SSN never travels in a URL (use POST /ssn-lookup)",
        ),
    ] = None,
) -> Response:
    if ssn is not None:
        ssn_in_url()
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

    search_name = search_term(name, "name")
    search_mrn = search_term(mrn, "mrn")

    read = patient_views.search(
        name=search_name,
        mrn=search_mrn,
        date_of_birth=date_of_birth,
        cursor=cursor,
        limit=limit,
        sort=field,
        descending=sort.startswith("-"),
    )
    async with scope(db, principal, purpose=PURPOSE):
        page = await db.execute_read(read, QueryOptions.for_phi("patients.search"))
    return page_json(page)


@router.post("/ssn-lookup", response_model=PatientPage, responses={403: {}})
async def lookup_by_ssn(body: SsnLookup, principal: CurrentPrincipal, db: Db) -> PatientPage:
    """Every visible patient with exactly this SSN (blind-index match: the table is not
    decrypted), as one page masked for the caller's role."""
    if visibility(principal.role, PhiKind.SSN) is Visibility.NONE:
        raise ApiError(403, "forbidden", "your role may not search by ssn")
    refuse_masked(body.ssn, ["body", "ssn"])
    term = body.ssn

    async def op(session: AsyncSession) -> list[Patient]:
        return await PatientRepository(session).find_by_ssn(term)

    async with scope(db, principal, purpose=PURPOSE):
        found = await db.execute_read(op, QueryOptions.for_phi("patients.find_by_ssn"))
    return PatientPage(items=[present(p) for p in found], next_cursor=None)


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
    if_match: IfMatch = None,
) -> Response:
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
    check_writable(principal, changes)
    if "mrn" in changes:
        # An MRN change must be checked against every patient, soft-deleted ones included:
        # the ORM path does that; every other change goes through the command.
        return await _update_mrn(patient_id, expected, changes, principal, db)
    async with scope(db, principal, purpose=PURPOSE):
        try:
            record = await db.execute_write(
                patient_commands.update(patient_id, expected_version=expected, **changes),
                QueryOptions.for_phi("patients.update"),
            )
        except NotFound:
            raise not_found() from None
        except ConflictError:
            raise _version_conflict() from None
    return patient_json(record)


async def _update_mrn(
    patient_id: uuid.UUID,
    expected: int | None,
    changes: dict[str, Any],
    principal: Principal,
    db: DatabaseService,
) -> Response:
    async def op(session: AsyncSession) -> Patient:
        # Soft-deleted patients keep their MRN, so look past the repository's filter.
        taken = select(Patient.id).where(Patient.mrn == changes["mrn"], Patient.id != patient_id)
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
            raise _version_conflict() from None
    response = Response(present(patient).model_dump_json(), media_type="application/json")
    response.headers["ETag"] = etag(patient.version)
    return response


def _version_conflict() -> ApiError:
    return ApiError(
        409, "version_conflict", "the patient was modified by someone else; reload it and retry"
    )


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
