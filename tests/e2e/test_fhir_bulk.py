"""FHIR bulk export over HTTP, on SQLite and PostgreSQL: the kick-off / status / files
pattern, who may export and see a job, what is audited, and a job outliving its process."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import DatabaseService, QueryOptions, audit_log
from healthdb.audit_log import AuditFilter
from healthdb.models import ExportJob
from healthdb_api.app import create_app
from healthdb_api.fhir.export import ExportRunner
from healthdb_api.fhir.jobs import JobRef, Position
from healthdb_api.fhir.settings import FhirSettings
from healthdb_api.settings import ApiSettings
from tests.e2e.conftest import Account, register, staff
from tests.e2e.fhir_support import FHIR_JSON, export_all, mrn_of, patient_body, poll

EXPORT = "/fhir/Patient/$export"
ASYNC = {"Prefer": "respond-async"}
FILE_SIZE = 3


def fhir_app(settings: ApiSettings, **fhir: Any) -> FastAPI:
    app = create_app(settings)
    app.state.fhir_settings = FhirSettings(export_file_size=FILE_SIZE, **fhir)
    return app


@pytest.fixture
def app(api_settings: ApiSettings) -> FastAPI:
    return fhir_app(api_settings)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def chart(client: httpx.AsyncClient, headers: dict[str, str], count: int) -> set[str]:
    """``count`` new patients; their MRNs."""
    mrns = set()
    for _ in range(count):
        created = await client.post(
            "/fhir/Patient", json=patient_body(), headers={**headers, **FHIR_JSON}
        )
        assert created.status_code == 201, created.text
        mrns.add(mrn_of(created.json()))
    return mrns


async def audited(db: DatabaseService, clinic_id: str, where: AuditFilter) -> list[Any]:
    async def read(session: AsyncSession) -> list[Any]:
        page = await audit_log.AuditQuery(session).page(where, limit=200)
        return list(page.items)

    async with db.clinic(clinic_id, role="clinic_admin"):
        return await db.execute_read(read, QueryOptions.for_read("test.audit"))


async def test_export_writes_files_and_audits_every_patient(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    admin = await register(client)
    _, doctor = await staff(client, admin, "doctor")
    mrns = await chart(client, admin.headers, 7)
    manifest, resources = await export_all(client, doctor)
    assert sorted(mrn_of(r) for r in resources) == sorted(mrns)
    assert [o["count"] for o in manifest["output"]] == [3, 3, 1]
    assert manifest["requiresAccessToken"] is True
    assert manifest["error"] == []
    assert manifest["request"].endswith(EXPORT)
    # Exactly what a read answers the same doctor.
    for resource in resources:
        read = await client.get(f"/fhir/Patient/{resource['id']}", headers=doctor)
        assert read.json() == resource
    db: DatabaseService = app.state.db
    clinic = admin.clinic["id"]
    reads = await audited(db, clinic, AuditFilter(resource_type="patients", action="phi.read"))
    exported = {e.resource_id for e in reads if e.purpose == "export"}
    assert exported == {r["id"] for r in resources}  # each patient's read, as the doctor
    files = await audited(db, clinic, AuditFilter(action="phi.export"))
    assert len(files) == 3
    assert {e.actor_role for e in files} == {"doctor"}
    downloads = await audited(db, clinic, AuditFilter(resource_type="export_files"))
    assert len([e for e in downloads if e.action == "phi.read"]) == 3


async def test_a_clinic_admin_export_is_audited_as_masked(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    admin = await register(client)
    await chart(client, admin.headers, 2)
    _, resources = await export_all(client, admin.headers)
    assert len(resources) == 2
    # A clinic admin may not see notes: the same per-patient audit as any masked read.
    events = await audited(app.state.db, admin.clinic["id"], AuditFilter(action="phi.read_masked"))
    assert {e.resource_id for e in events if e.purpose == "export"} == {r["id"] for r in resources}


async def test_only_exporters_and_only_the_requester(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    _, doctor = await staff(client, admin, "doctor")
    other = await register(client)
    await chart(client, admin.headers, 1)
    for role in ("nurse", "receptionist"):
        _, headers = await staff(client, admin, role)
        refused = await client.get(EXPORT, headers={**headers, **ASYNC})
        assert refused.status_code == 403
        assert refused.json()["resourceType"] == "OperationOutcome"
    started = await client.get(EXPORT, headers={**doctor, **ASYNC})
    status_url = started.headers["Content-Location"]
    manifest = await poll(client, status_url, doctor)
    file_url = manifest["output"][0]["url"]
    random_job = status_url.rsplit("/", 1)[0] + f"/{uuid.uuid4()}"
    baseline = await client.get(random_job, headers=admin.headers)
    assert baseline.status_code == 404
    for headers in (admin.headers, other.headers):  # same clinic, other user; other clinic
        for url in (status_url, file_url, random_job):
            answer = await client.get(url, headers=headers)
            assert (answer.status_code, answer.content) == (404, baseline.content)
        assert (await client.delete(status_url, headers=headers)).status_code == 404
    assert (await client.get(file_url, headers=doctor)).status_code == 200


async def test_kick_off_refusals(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    headers = {**admin.headers, **ASYNC}
    assert (await client.get(EXPORT, headers=admin.headers)).status_code == 400
    for params in (
        {"_type": "Observation"},
        {"_outputFormat": "text/csv"},
        {"_since": "yesterday"},
        {"_since": "2020-01-01T00:00:00"},  # no time zone
        {"_elements": "id"},
    ):
        refused = await client.get(EXPORT, params=params, headers=headers)
        assert refused.status_code == 400, params
        assert refused.json()["resourceType"] == "OperationOutcome"
    lenient = {**headers, "Prefer": "respond-async, handling=lenient"}
    accepted = await client.get(EXPORT, params={"_type": "Patient,Observation"}, headers=lenient)
    assert accepted.status_code == 202
    await poll(client, accepted.headers["Content-Location"], admin.headers)


async def test_since_exports_only_what_changed(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    await chart(client, admin.headers, 2)
    since = dt.datetime.now(dt.UTC)
    later = await chart(client, admin.headers, 1)
    _, resources = await export_all(
        client, admin.headers, params={"_since": since.isoformat().replace("+00:00", "Z")}
    )
    assert {mrn_of(r) for r in resources} == later


async def test_delete_cancels_and_expired_jobs_vanish(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    admin = await register(client)
    await chart(client, admin.headers, 1)
    started = await client.get(EXPORT, headers={**admin.headers, **ASYNC})
    url = started.headers["Content-Location"]
    assert (await client.delete(url, headers=admin.headers)).status_code == 202
    assert (await client.get(url, headers=admin.headers)).status_code == 404

    started = await client.get(EXPORT, headers={**admin.headers, **ASYNC})
    url = started.headers["Content-Location"]
    file_url = (await poll(client, url, admin.headers))["output"][0]["url"]
    job_id = uuid.UUID(url.rsplit("/", 1)[1])

    async def expire(session: AsyncSession) -> None:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        await session.execute(
            update(ExportJob).where(ExportJob.id == job_id).values(expires_at=past)
        )

    db: DatabaseService = app.state.db
    async with db.clinic(admin.clinic["id"], role="clinic_admin"):
        await db.execute_write(expire)
    assert (await client.get(file_url, headers=admin.headers)).status_code == 404
    assert (await client.get(url, headers=admin.headers)).status_code == 404


def _hang_after_first_file(runner: ExportRunner, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Make ``runner`` write one file, then hang (until cancelled) as if the process froze."""
    original = runner._step
    wrote = asyncio.Event()

    async def step(job: JobRef, at: Position) -> Position | None:
        result = await original(job, at)
        wrote.set()
        await asyncio.Event().wait()
        return result

    monkeypatch.setattr(runner, "_step", step)
    return wrote


async def _first_instance(
    settings: ApiSettings, monkeypatch: pytest.MonkeyPatch, *, crash: bool, **fhir: Any
) -> tuple[Account, set[str], str]:
    """Instance 1: register, chart 7 patients, kick off, write one file and stop (cleanly,
    giving the lease back, or crashing with the lease held)."""
    app = fhir_app(settings, **fhir)
    async with serving(app) as client:
        admin = await register(client)
        mrns = await chart(client, admin.headers, 7)
        runner: ExportRunner = app.state.fhir.runner
        wrote = _hang_after_first_file(runner, monkeypatch)
        if crash:  # a crashed process never gives its lease back
            monkeypatch.setattr(runner, "_release", _no_release)
        started = await client.get(EXPORT, headers={**admin.headers, **ASYNC})
        url = started.headers["Content-Location"]
        async with asyncio.timeout(60):
            await wrote.wait()
        status = await client.get(url, headers=admin.headers)
        assert status.status_code == 202
        assert status.headers["X-Progress"] == "3 patients in 1 file(s)"
    return admin, mrns, url


async def _no_release(job: JobRef) -> None:
    return None


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash"])
async def test_a_job_survives_its_process(
    api_settings: ApiSettings, monkeypatch: pytest.MonkeyPatch, crash: bool
) -> None:
    # A crashed worker's lease must run out before another takes over: keep it short.
    lease = {"export_lease_seconds": 0.5} if crash else {}
    admin, mrns, url = await _first_instance(api_settings, monkeypatch, crash=crash, **lease)
    async with serving(fhir_app(api_settings, **lease)) as client:
        manifest = await poll(client, url, admin.headers)
        assert [o["count"] for o in manifest["output"]] == [3, 3, 1]
        exported: list[str] = []
        for output in manifest["output"]:
            got = await client.get(output["url"], headers=admin.headers)
            exported += [mrn_of(json.loads(line)) for line in got.text.splitlines()]
    assert sorted(exported) == sorted(mrns)  # every patient once: none lost, none twice


async def test_too_many_running_exports_answer_429(
    api_settings: ApiSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = fhir_app(api_settings, export_max_running=1)
    async with serving(app) as client:
        admin = await register(client)
        await chart(client, admin.headers, 4)
        wrote = _hang_after_first_file(app.state.fhir.runner, monkeypatch)
        first = await client.get(EXPORT, headers={**admin.headers, **ASYNC})
        assert first.status_code == 202
        async with asyncio.timeout(60):
            await wrote.wait()
        second = await client.get(EXPORT, headers={**admin.headers, **ASYNC})
        assert second.status_code == 429
        assert "Retry-After" in second.headers
