"""FHIR Bulk Data export for one clinic (the Bulk Data Access IG's asynchronous pattern).

1. Kick-off: ``GET /fhir/Patient/$export`` with ``Prefer: respond-async`` → 202 and a
   ``Content-Location`` status URL. Parameters: ``_type`` (``Patient``), ``_outputFormat``
   (NDJSON), ``_since`` (an instant); others are refused unless ``Prefer: handling=lenient``.
2. Status: ``GET`` the status URL → 202 with ``X-Progress`` while running, then 200 with the
   manifest (``output``: one NDJSON file per page of patients); ``DELETE`` cancels and deletes.
3. Files: ``GET`` each ``output[].url`` → ``application/fhir+ndjson``.

Only clinic admins and doctors may export, and a job answers only the staff member who
started it (anyone else, in the clinic or not, gets the 404 of a job that never existed):
its files hold what that person's role may see. Jobs and files live in the database (see
docs/fhir.md for why), so a job survives a restart: the next status poll resumes it.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import uuid
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response

from healthdb import Role
from healthdb.models import ExportJob
from healthdb_api.deps import Db, Principal, require_roles
from healthdb_api.fhir import jobs
from healthdb_api.fhir.http import base_url, prefers, state
from healthdb_api.fhir.mapping import instant
from healthdb_api.fhir.outcome import FhirError, FhirRoute, resource_response

router = APIRouter(route_class=FhirRoute)

Exporter = Annotated[Principal, Depends(require_roles(Role.CLINIC_ADMIN, Role.DOCTOR))]

NDJSON = "application/fhir+ndjson"
_FORMATS = frozenset({NDJSON, "application/ndjson", "ndjson"})
_KICKOFF = frozenset({"_type", "_outputFormat", "_since"})


@router.get("/Patient/$export")
async def kick_off(request: Request, principal: Exporter, db: Db) -> Response:
    """Start an export of the clinic's patients; answers 202 with the status URL."""
    if not prefers(request, "respond-async"):
        raise FhirError(400, "bulk export is asynchronous: send Prefer: respond-async")
    lenient = prefers(request, "handling=lenient")
    params = request.query_params
    unknown = sorted(set(params) - _KICKOFF)
    if unknown and not lenient:
        raise FhirError(400, "unsupported export parameter(s)", code="not-supported")
    _check_types(params.getlist("_type"), lenient)
    output_format = params.get("_outputFormat", NDJSON)
    if output_format not in _FORMATS:
        raise FhirError(400, "_outputFormat must be application/fhir+ndjson", code="not-supported")
    since = _instant(params.get("_since"))
    accepted = [(k, v) for k, v in params.multi_items() if k in _KICKOFF]
    base = base_url(request)
    request_url = f"{base}/Patient/$export" + (f"?{urlencode(accepted)}" if accepted else "")
    fhir = state(request)
    job = await jobs.create(
        db,
        principal,
        request_url=request_url[:500],
        changed_since=since,
        max_running=fhir.settings.export_max_running,
    )
    fhir.runner.start(jobs.JobRef.of(job))
    return Response(status_code=202, headers={"Content-Location": f"{base}/bulk-export/{job.id}"})


def _check_types(values: list[str], lenient: bool) -> None:
    types = {t.strip() for value in values for t in value.split(",") if t.strip()}
    if types - {"Patient"} and not lenient:
        raise FhirError(
            400, "_type: this server exports Patient resources only", code="not-supported"
        )


def _instant(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise FhirError(400, "_since must be an instant with a time zone", expression="_since")
    return parsed


async def _own_job(db: Db, principal: Principal, job_id: str) -> ExportJob:
    try:
        wanted = uuid.UUID(job_id)
    except ValueError:
        wanted = None
    job = None if wanted is None else await jobs.load(db, principal, wanted)
    if job is None:
        raise FhirError(404, "export job not found")
    return job


@router.get("/bulk-export/{job_id}")
async def job_status(job_id: str, request: Request, principal: Exporter, db: Db) -> Response:
    """202 with progress while the job runs (resuming it if nobody works on it), the
    manifest once it is complete."""
    job = await _own_job(db, principal, job_id)
    fhir = state(request)
    if job.status == jobs.IN_PROGRESS:
        unattended = job.lease_expires is None or job.lease_expires <= dt.datetime.now(dt.UTC)
        if unattended and not fhir.runner.running(job.id):
            fhir.runner.start(jobs.JobRef.of(job))
        progress = f"{job.exported} patients in {job.file_count} file(s)"
        return Response(status_code=202, headers={"X-Progress": progress, "Retry-After": "1"})
    if job.status == jobs.FAILED:
        raise FhirError(
            500, f"the export failed: {job.failure or 'unknown reason'}", code="exception"
        )
    return resource_response(
        await _manifest(db, principal, job, base_url(request)),
        headers=_expires(job),
    )


async def _manifest(db: Db, principal: Principal, job: ExportJob, base: str) -> dict[str, Any]:
    output = [
        {"type": kind, "url": f"{base}/bulk-export/{job.id}/files/{seq}", "count": count}
        for seq, kind, count in await jobs.files(db, principal, job.id)
    ]
    return {
        "transactionTime": instant(job.created_at),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": output,
        "error": [],
    }


def _expires(job: ExportJob) -> dict[str, str]:
    if job.expires_at is None:
        return {}
    return {"Expires": email.utils.format_datetime(job.expires_at.astimezone(dt.UTC), usegmt=True)}


@router.delete("/bulk-export/{job_id}")
async def cancel_job(job_id: str, request: Request, principal: Exporter, db: Db) -> Response:
    """Cancel the job (if running) and delete it and its files."""
    job = await _own_job(db, principal, job_id)
    await state(request).runner.stop(job.id)
    await jobs.remove(db, principal, job.id)
    return Response(status_code=202)


@router.get("/bulk-export/{job_id}/files/{seq}")
async def download(job_id: str, seq: str, principal: Exporter, db: Db) -> Response:
    """One output file, as NDJSON (audited as a read of that file)."""
    job = await _own_job(db, principal, job_id)
    number = int(seq) if seq.isascii() and seq.isdigit() and len(seq) <= 9 else 0
    text = (
        None
        if job.status != jobs.COMPLETED
        else await jobs.file_text(db, principal, job.id, number)
    )
    if text is None:
        raise FhirError(404, "export file not found")
    return Response(text.encode(), media_type=NDJSON)
