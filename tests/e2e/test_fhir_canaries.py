"""Canary patients through the FHIR face, on SQLite and PostgreSQL, logging at DEBUG: a
canary reaches a body only as an authorised read of its own element; no OperationOutcome
echoes one, and no log line carries one (checked here and by the suite-wide capture)."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from healthdb_api.fhir.mapping import SSN_SYSTEM
from healthdb_api.fhir.settings import DEFAULT_MRN_SYSTEM
from tests.canary import LOGS, canary, canary_email, canary_phone, found_in
from tests.e2e.conftest import register, staff
from tests.e2e.fhir_support import FHIR_JSON, export_all, poll

BASE = "/fhir/Patient"


def canary_patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": DEFAULT_MRN_SYSTEM, "value": canary("mrn")},
            {"system": SSN_SYSTEM, "value": canary("ssn") + "1234"},
        ],
        "name": [{"family": canary("family"), "given": [canary("given")]}],
        "gender": "female",
        "birthDate": "1962-07-08",
        "telecom": [
            {"system": "phone", "value": canary_phone()},
            {"system": "email", "value": canary_email()},
        ],
        "address": [{"text": canary("address")}],
    }


async def test_fhir_bodies_and_logs_carry_canaries_only_when_authorised(
    client: httpx.AsyncClient,
) -> None:
    mark = LOGS.mark()
    admin = await register(client)
    _, doctor = await staff(client, admin, "doctor")
    _, desk = await staff(client, admin, "receptionist")
    chart = canary_patient()
    ssn = chart["identifier"][1]["value"]
    created = await client.post(BASE, json=chart, headers={**doctor, **FHIR_JSON})
    assert created.status_code == 201, created.text
    url = f"{BASE}/{created.json()['id']}"

    # The desk reads and searches: names and contacts yes, the SSN never.
    family = chart["name"][0]["family"]
    for response in (
        await client.get(url, headers=desk),
        await client.get(BASE, params={"family": family[:12]}, headers=desk),
        await client.get(
            BASE, params={"identifier": chart["identifier"][0]["value"]}, headers=desk
        ),
    ):
        assert response.status_code == 200, response.text
        assert family in response.text
        assert ssn not in response.text

    # Refusals echo nothing they were sent.
    refusals = [
        await client.post(
            BASE,
            json={**canary_patient(), "birthDate": canary("dob")},
            headers={**doctor, **FHIR_JSON},
        ),
        await client.post(
            BASE,
            json={**canary_patient(), "gender": canary("gender")},
            headers={**doctor, **FHIR_JSON},
        ),
        await client.post(
            BASE, json={**canary_patient(), canary("element"): 1}, headers={**doctor, **FHIR_JSON}
        ),
        await client.get(BASE, params={"identifier": f"{SSN_SYSTEM}|{ssn}"}, headers=desk),
        *await _in_url(client, desk),
        await client.put(
            url, json={**chart, "id": created.json()["id"]}, headers={**desk, **FHIR_JSON}
        ),
    ]
    for refusal in refusals:
        assert refusal.status_code >= 400
        assert not found_in(refusal.text), refusal.text

    # The doctor's export carries the chart (an authorised read), the desk's attempt nothing.
    _, exported = await export_all(client, doctor)
    assert ssn in str(exported)
    denied = await client.get("/fhir/Patient/$export", headers={**desk, "Prefer": "respond-async"})
    assert denied.status_code == 403
    assert not found_in(denied.text)
    assert not found_in(LOGS.text(mark))


async def _in_url(client: httpx.AsyncClient, desk: dict[str, str]) -> list[httpx.Response]:
    """Canaries in a URL's path and parameter names. httpx logs the URLs it requests (the
    test's client, not the service): quiet it, so the capture sees only the service."""
    quiet = logging.getLogger("httpx")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        strict = {**desk, "Prefer": "handling=strict"}
        return [
            await client.get(BASE, params={canary("param"): "x"}, headers=strict),
            await client.get(f"/fhir/{canary('path')}", headers=desk),
        ]
    finally:
        quiet.setLevel(level)


async def test_the_manifest_names_no_patient_data(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    await client.post(BASE, json=canary_patient(), headers={**admin.headers, **FHIR_JSON})
    started = await client.get(
        "/fhir/Patient/$export", headers={**admin.headers, "Prefer": "respond-async"}
    )
    manifest = await poll(client, started.headers["Content-Location"], admin.headers)
    assert not found_in(str(manifest))
