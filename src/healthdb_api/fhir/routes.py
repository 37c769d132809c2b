"""FHIR R4 Patient interactions: ``metadata``, read, vread (current version), search,
create and update, under the same walls as ``/api/v1/patients``.

Every handler runs in the caller's clinic scope: reads go through the ORM-free views
(masked for the role and audited per patient), writes through :class:`PatientRepository`
(audited in the same transaction). A patient of another clinic answers exactly like one
that does not exist. Updates are version-aware: ``If-Match: W/"3"`` is required (428
without it, 412 when stale), as the CapabilityStatement's ``versioned-update`` says.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
from typing import Any

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import ConflictError, InvalidInput, NotFound, QueryOptions
from healthdb.models import Patient
from healthdb.phi import PhiKind, Visibility, mask_value, visibility
from healthdb.repositories import PatientRepository, patient_views
from healthdb.repositories.pagination import Page
from healthdb_api.deps import CurrentPrincipal, Db, Principal, scope
from healthdb_api.fhir.capability import capability_statement
from healthdb_api.fhir.http import base_url, not_found, patient_uuid, prefers, read_json, state
from healthdb_api.fhir.mapping import (
    InvalidResource,
    PatientLike,
    looks_masked,
    parse_patient,
    to_resource,
)
from healthdb_api.fhir.outcome import FhirError, FhirRoute, resource_response
from healthdb_api.fhir.search import parse_search, searchset
from healthdb_api.routes.patient_rules import check_writable, parse_if_match

router = APIRouter(route_class=FhirRoute)

PURPOSE = "patient_care"
_PUBLISHED = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _etag(version: int) -> str:
    return f'W/"{version}"'


def _patient_response(patient: PatientLike, request: Request, status_code: int = 200) -> Response:
    body = to_resource(patient, mrn_system=state(request).settings.mrn_system)
    headers = {"ETag": _etag(patient.version), "Last-Modified": body["meta"]["lastUpdated"]}
    if status_code == status.HTTP_201_CREATED:
        headers["Location"] = f"{base_url(request)}/Patient/{patient.id}/_history/{patient.version}"
    return resource_response(body, status_code, headers=headers)


def _parse(body: Any, request: Request) -> dict[str, Any]:
    """The column values of the body's Patient (notes are not part of the mapping)."""
    try:
        parsed = parse_patient(body, mrn_system=state(request).settings.mrn_system)
    except InvalidResource as exc:
        raise FhirError(400, str(exc), issues=exc.issues) from None
    return parsed.model_dump(exclude={"notes"})


def _masked_ssn() -> FhirError:
    return FhirError(
        422,
        "the US SSN identifier looks masked; send the full SSN or leave it out",
        expression="Patient.identifier",
    )


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    """The CapabilityStatement (public: no token needed)."""
    version = importlib.metadata.version("healthdb")
    body = capability_statement(
        base=base_url(request), software_version=version, published=_PUBLISHED
    )
    return resource_response(body)


@router.get("/Patient/{patient_id}")
async def read_patient(
    patient_id: str, request: Request, principal: CurrentPrincipal, db: Db
) -> Response:
    return _patient_response(await _read(db, principal, patient_id), request)


@router.get("/Patient/{patient_id}/_history/{version_id}")
async def vread_patient(
    patient_id: str, version_id: str, request: Request, principal: CurrentPrincipal, db: Db
) -> Response:
    """The current version by its version id (earlier versions are not kept)."""
    patient = await _read(db, principal, patient_id)
    if version_id != str(patient.version):
        raise FhirError(404, "only the current version of a Patient is kept", code="not-found")
    return _patient_response(patient, request)


async def _read(db: Db, principal: Principal, patient_id: str) -> PatientLike:
    pid = patient_uuid(patient_id)
    async with scope(db, principal, purpose=PURPOSE):
        record = await db.execute_read(patient_views.by_id(pid), QueryOptions.for_phi("fhir.read"))
    if record is None:
        raise not_found()
    return record


@router.get("/Patient")
async def search_patients(request: Request, principal: CurrentPrincipal, db: Db) -> Response:
    fhir = state(request)
    query = parse_search(
        request.query_params.multi_items(),
        page_size=fhir.settings.search_page_size,
        mrn_system=fhir.settings.mrn_system,
        strict=prefers(request, "handling=strict"),
    )
    page: Page[Any] = Page(items=[], next_cursor=None)
    if not query.matches_nothing:
        try:
            read = patient_views.search_demographics(
                family=query.family,
                family_exact=query.family_exact,
                given=query.given,
                born_from=query.born_from,
                born_before=query.born_before,
                mrn=query.mrn,
                cursor=query.cursor,
                limit=query.count,
            )
        except InvalidInput as exc:  # a mangled _cursor: a bad request, not a bad resource
            raise FhirError(400, str(exc)) from None
        async with scope(db, principal, purpose=PURPOSE):
            page = await db.execute_read(read, QueryOptions.for_phi("fhir.search"))
    bundle = searchset(page, query, base=base_url(request), mrn_system=fhir.settings.mrn_system)
    return resource_response(bundle)


@router.post("/Patient")
async def create_patient(request: Request, principal: CurrentPrincipal, db: Db) -> Response:
    fields = _parse(await read_json(request), request)
    if looks_masked(fields["ssn"]):
        raise _masked_ssn()
    check_writable(principal, fields)

    async def op(session: AsyncSession) -> Patient:
        return await PatientRepository(session).add(Patient(**fields))

    async with scope(db, principal, purpose=PURPOSE):
        try:
            patient = await db.execute_write(op, QueryOptions.for_phi("fhir.create"))
        except ConflictError:
            raise _duplicate_mrn() from None
    return _patient_response(patient, request, status.HTTP_201_CREATED)


def _duplicate_mrn() -> FhirError:
    return FhirError(
        409,
        "a patient with this medical record number already exists in the clinic",
        code="duplicate",
        expression="Patient.identifier",
    )


@router.put("/Patient/{patient_id}")
async def update_patient(
    patient_id: str, request: Request, principal: CurrentPrincipal, db: Db
) -> Response:
    """Replace the mapped elements of the patient (notes are kept: they are not mapped)."""
    pid = patient_uuid(patient_id)
    expected = _if_match(request)
    body = await read_json(request)
    if not isinstance(body, dict) or body.get("id") != patient_id:
        raise FhirError(
            400, "the resource's id must equal the id in the URL", expression="Patient.id"
        )
    changes = _parse(body, request)
    # A masked SSN is settled in the transaction (kept if unchanged, else refused).
    masked = looks_masked(changes["ssn"])
    check_writable(principal, {k: v for k, v in changes.items() if not (masked and k == "ssn")})

    async def op(session: AsyncSession) -> Patient:
        repository = PatientRepository(session)
        if masked:
            await _keep_masked_ssn(repository, principal, pid, changes)
        taken = select(Patient.id).where(Patient.mrn == changes["mrn"], Patient.id != pid)
        # Soft-deleted patients keep their MRN, so look past the repository's filter.
        if (await session.execute(taken.limit(1))).first() is not None:
            raise _duplicate_mrn()
        return await repository.update(pid, expected_version=expected, **changes)

    async with scope(db, principal, purpose=PURPOSE):
        try:
            patient = await db.execute_write(op, QueryOptions.for_phi("fhir.update"))
        except NotFound:
            raise not_found() from None
        except ConflictError:
            raise FhirError(
                412, "the patient was modified by someone else; read it again and retry"
            ) from None
    return _patient_response(patient, request)


def _if_match(request: Request) -> int:
    header = request.headers.get("if-match")
    version = parse_if_match(header)
    if version is None:
        raise FhirError(
            428,
            'updating a Patient needs If-Match with the version you read, e.g. If-Match: W/"3"',
            expression="If-Match",
        )
    return version


async def _keep_masked_ssn(
    repository: PatientRepository, principal: Principal, pid: Any, changes: dict[str, Any]
) -> None:
    """A role that sees the SSN masked sends it back unchanged: keep the stored one. Any
    other masked-looking value would overwrite the real SSN with stars: refused."""
    current = await repository.get(pid)
    if current is None:
        raise NotFound("Patient not found")
    seen = visibility(principal.role, PhiKind.SSN)
    if (
        seen is not Visibility.PARTIAL
        or mask_value(PhiKind.SSN, current.ssn, seen) != changes["ssn"]
    ):
        raise _masked_ssn()
    del changes["ssn"]
