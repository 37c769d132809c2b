"""An unmodified third-party FHIR client (fhirpy's AsyncFHIRClient, over aiohttp) against the
service served by uvicorn on a loopback port, on SQLite and PostgreSQL; and the round trip:
synthetic patients imported into one clinic, bulk-exported, imported into another, equal
field by field, while the second clinic never sees a row of the first."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome

from healthdb import DatabaseService
from healthdb_api.app import create_app
from healthdb_api.fhir import synthetic
from healthdb_api.fhir.importer import ImportReport, import_ndjson
from healthdb_api.fhir.mapping import parse_patient
from healthdb_api.fhir.settings import DEFAULT_MRN_SYSTEM, FhirSettings
from healthdb_api.settings import ApiSettings
from tests.e2e.conftest import register, staff
from tests.e2e.fhir_support import comparable, export_all, live_server, mrn_of, patient_body

#: Patients in the round trip: enough for several export files and search pages, small
#: enough for the suite (bench/fhir_path.py runs 10,000).
ROUND_TRIP = 500


@pytest.fixture
async def served(api_settings: ApiSettings) -> AsyncIterator[tuple[FastAPI, str]]:
    app = create_app(api_settings)
    app.state.fhir_settings = FhirSettings(export_file_size=128)
    async with live_server(app) as url:
        yield app, url


def fhir_client(url: str, token: str, **headers: str) -> AsyncFHIRClient:
    return AsyncFHIRClient(f"{url}/fhir", authorization=f"Bearer {token}", extra_headers=headers)


async def test_fhirpy_creates_reads_searches_and_updates(served: tuple[FastAPI, str]) -> None:
    _, url = served
    async with httpx.AsyncClient(base_url=url) as http:
        admin = await register(http)
    client = fhir_client(url, admin.access_token)
    family = f"Fhirpy{uuid.uuid4().hex[:8]}"
    created = []
    for n in range(5):
        body = patient_body(name=[{"family": family, "given": [f"Given{n}"]}])
        patient = client.resource("Patient", **body)
        await patient.save()
        assert patient.id is not None
        assert patient["meta"]["versionId"] == "1"
        created.append(patient)

    read = await client.get("Patient", created[0].id)
    assert read["name"][0]["family"] == family
    assert mrn_of(read) == mrn_of(created[0])

    search = client.resources("Patient").search(family=family).limit(2)
    first_page = await search.fetch()
    assert len(first_page) == 2
    everything = await search.fetch_all()  # follows the Bundle's next links
    assert sorted(p.id for p in everything) == sorted(p.id for p in created)

    # Version-aware update: fhirpy sends the If-Match it is configured with.
    stale_client = fhir_client(url, admin.access_token, **{"If-Match": 'W/"1"'})
    mine = stale_client.resource("Patient", **dict(read))
    mine["gender"] = "other"
    await mine.save()
    assert mine["meta"]["versionId"] == "2"
    mine["gender"] = "unknown"
    with pytest.raises(MultipleResourcesFound) as conflict:  # fhirpy's name for a 412
        await mine.save()
    assert json.loads(str(conflict.value))["issue"][0]["code"] == "conflict"
    stored = await client.get("Patient", created[0].id)
    assert stored["gender"] == "other"
    assert stored["meta"]["versionId"] == "2"
    with pytest.raises(OperationOutcome):  # no If-Match at all: 428
        await client.resource("Patient", **dict(stored)).save()


async def test_round_trip_between_clinics(served: tuple[FastAPI, str]) -> None:
    app, url = served
    db: DatabaseService = app.state.db
    async with httpx.AsyncClient(base_url=url) as http:
        first, second = await register(http), await register(http)
        _, doctor_a = await staff(http, first, "doctor")
        _, doctor_b = await staff(http, second, "doctor")
        source = synthetic.ndjson(synthetic.patients(ROUND_TRIP, mrn_system=DEFAULT_MRN_SYSTEM))
        seeded = await _import(db, first.clinic["id"], source)
        assert (seeded.created, seeded.failed) == (ROUND_TRIP, 0)
        await _sees_none(http, doctor_b, first_ids=set())  # before anything moved

        manifest, exported = await export_all(http, doctor_a)
        assert len(exported) == ROUND_TRIP
        assert len(manifest["output"]) == 4  # 3 x 128 + 116
        first_ids = {r["id"] for r in exported}
        for link in [manifest["request"], *(o["url"] for o in manifest["output"])]:
            if "/bulk-export/" in link:  # the second clinic cannot follow the first's links
                assert (await http.get(link, headers=doctor_b)).status_code == 404

        text = "".join(json.dumps(r) + "\n" for r in exported)
        moved = await _import(db, second.clinic["id"], text)
        assert (moved.lines, moved.created, moved.failed) == (ROUND_TRIP, ROUND_TRIP, 0)
        again = await _import(db, second.clinic["id"], text)
        assert (again.created, again.existing, again.failed) == (0, ROUND_TRIP, 0)

        _, copied = await export_all(http, doctor_b)
        await _sees_none(http, doctor_b, first_ids)
    assert not first_ids & {r["id"] for r in copied}
    by_mrn = {mrn_of(r): comparable(r) for r in exported}
    assert {mrn_of(r): comparable(r) for r in copied} == by_mrn  # resource by resource
    # ... and column by column against the synthetic source (its addresses were structured).
    source_rows = {
        mrn_of(r): _columns(r)
        for r in synthetic.patients(ROUND_TRIP, mrn_system=DEFAULT_MRN_SYSTEM)
    }
    assert {mrn_of(r): _columns(r) for r in copied} == source_rows


def _columns(resource: dict[str, Any]) -> dict[str, Any]:
    return parse_patient(resource, mrn_system=DEFAULT_MRN_SYSTEM).model_dump()


async def _import(db: DatabaseService, clinic_id: str, text: str) -> ImportReport:
    lines = [(n, line.encode()) for n, line in enumerate(text.splitlines(), start=1)]
    return await import_ndjson(
        db, lines, clinic_id=uuid.UUID(clinic_id), mrn_system=DEFAULT_MRN_SYSTEM, chunk_size=100
    )


async def _sees_none(http: httpx.AsyncClient, headers: dict[str, str], first_ids: set[str]) -> None:
    """Nothing of the first clinic reaches the second: not by search, not by id."""
    token = headers["Authorization"].removeprefix("Bearer ")
    client = fhir_client(str(http.base_url).rstrip("/"), token)
    found = {p.id for p in await client.resources("Patient").search().limit(200).fetch_all()}
    assert not found & first_ids
    for patient_id in sorted(first_ids)[:20]:
        answer = await http.get(f"/fhir/Patient/{patient_id}", headers=headers)
        assert answer.status_code == 404
