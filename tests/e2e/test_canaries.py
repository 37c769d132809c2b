"""Canary patients over HTTP, on SQLite and PostgreSQL, with logging at DEBUG.

A body may carry a canary only when it is an authorised read of that very field: the doctor
reading the chart sees everything, the receptionist never the SSN or the notes, and no
error body (422, 403, 409, 401) ever echoes a canary it was sent. No log line carries one
(checked here and, for every test, by the suite-wide capture in ``tests/conftest.py``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx

from tests.canary import LOGS, canary, canary_email, canary_phone, found_in
from tests.e2e.conftest import register, staff

BASE = "/api/v1/patients"


def canary_body() -> dict[str, Any]:
    return {
        "mrn": canary("mrn"),
        "given_name": canary("given"),
        "family_name": canary("family"),
        "date_of_birth": "1962-07-08",
        "sex": "male",
        "phone": canary_phone(),
        "email": canary_email(),
        "address": canary("address"),
        "ssn": canary("ssn"),
        "notes": canary("notes"),
    }


def leaks(text: str, allowed: set[str]) -> set[str]:
    """Canaries in ``text`` other than the ``allowed`` ones."""
    permitted = {a.lower() for a in allowed}
    return {found for found in found_in(text) if found.lower() not in permitted}


async def test_bodies_carry_canaries_only_for_authorised_reads(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    _, doctor = await staff(client, admin, "doctor")
    _, desk = await staff(client, admin, "receptionist")
    chart = canary_body()
    created = await client.post(BASE, json=chart, headers=doctor)
    assert created.status_code == 201, created.text
    url = f"{BASE}/{created.json()['id']}"

    # The doctor may read every field: the canaries come back, exactly.
    full = await client.get(url, headers=doctor)
    assert {k: full.json()[k] for k in chart} == chart

    # The desk sees names and contact details, never the SSN or the notes, in any body.
    visible = {chart[k] for k in ("mrn", "given_name", "family_name", "phone", "address")}
    visible.add(chart["email"].split("@", 1)[0])
    new_address = canary("address")
    visible.add(new_address)
    desk_reads = [
        await client.get(url, headers=desk),
        await client.get(BASE, params={"name": chart["family_name"][:10]}, headers=desk),
        await client.get(BASE, params={"mrn": chart["mrn"]}, headers=desk),
        await client.post(f"{BASE}/ssn-lookup", json={"ssn": chart["ssn"]}, headers=desk),
        await client.patch(url, json={"address": new_address}, headers={**desk, "If-Match": '"1"'}),
    ]
    for response in desk_reads:
        assert response.status_code == 200, response.text
        assert chart["family_name"] in response.text  # an authorised read of the name
        assert not leaks(response.text, visible), response.request.url
        assert chart["ssn"] not in response.text
        assert chart["notes"] not in response.text

    # The desk may not write notes: refused, and the refusal echoes nothing it was sent.
    refused = await client.post(BASE, json=canary_body(), headers=desk)
    assert refused.status_code == 403
    assert not found_in(refused.text)


async def test_error_bodies_never_echo_canaries(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    _, doctor = await staff(client, admin, "doctor")
    chart = canary_body()
    assert (await client.post(BASE, json=chart, headers=doctor)).status_code == 201
    future = (dt.date.today() + dt.timedelta(days=400)).isoformat()
    invalid: list[dict[str, Any]] = [
        {"email": f"{canary('email')}@"},
        {"email": f"<{canary('email')}@example.org"},
        {"email": f"{canary('email')} x@example.org"},
        {"phone": canary("phone")},
        {"sex": canary("sex")},
        {"given_name": canary("given") * 20},
        {"family_name": canary("family") + "\x07"},
        {"date_of_birth": canary("dob")},
        {"date_of_birth": future, "given_name": canary("given")},
        {canary("field"): "x", "notes": canary("notes")},
        {"mrn": canary("mrn") * 4},
    ]
    for change in invalid:
        response = await client.post(BASE, json={**canary_body(), **change}, headers=doctor)
        assert response.status_code == 422, (change, response.text)
        assert response.json()["error"]["code"] == "validation_error"
        # An unknown field's *name* is reported (typos fail loudly); no value ever is.
        assert not leaks(response.text, {k for k in change if k.startswith("CNRY")}), change

    duplicate = await client.post(BASE, json={**canary_body(), "mrn": chart["mrn"]}, headers=doctor)
    assert duplicate.status_code == 409
    assert not found_in(duplicate.text)

    url = f"{BASE}/{uuid.uuid4()}"
    missing = await client.patch(url, json={"notes": canary("notes")}, headers=doctor)
    assert missing.status_code in {404, 428}
    assert not found_in(missing.text)

    password = canary("password")
    login = await client.post(
        "/api/v1/auth/login", json={"email": canary_email(), "password": password}
    )
    assert login.status_code == 401
    assert not found_in(login.text)
    bad_token = await client.get(BASE, headers={"Authorization": f"Bearer {canary('token')}"})
    assert bad_token.status_code == 401
    assert not found_in(bad_token.text)


async def test_no_canary_reaches_the_logs(client: httpx.AsyncClient) -> None:
    since = LOGS.mark()
    admin = await register(client)
    _, doctor = await staff(client, admin, "doctor")
    chart = canary_body()
    created = await client.post(BASE, json=chart, headers=doctor)
    assert created.status_code == 201, created.text
    url = f"{BASE}/{created.json()['id']}"
    await client.get(BASE, params={"name": chart["given_name"][:8]}, headers=doctor)
    found = await client.post(f"{BASE}/ssn-lookup", json={"ssn": chart["ssn"]}, headers=doctor)
    assert found.json()["items"][0]["ssn"] == chart["ssn"]  # an authorised read, not logged
    refused = await client.get(BASE, params={"ssn": canary("ssn")}, headers=doctor)
    assert refused.status_code == 422
    assert not found_in(refused.text)
    await client.patch(url, json={"notes": canary("notes")}, headers={**doctor, "If-Match": '"1"'})
    await client.post(BASE, json={**chart, "phone": canary("phone")}, headers=doctor)
    await client.post("/api/v1/auth/login", json={"email": admin.email, "password": canary("pw")})
    await client.delete(url, headers=doctor)

    captured = LOGS.text(since)
    assert "login_failed" in captured, "the suite-wide log capture is not installed"
    assert not found_in(captured)
