"""Input that used to answer 500, on SQLite and PostgreSQL: each is now a 4xx naming the
field (or the limit), and an anonymous request never puts an error in the log."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.canary import LOGS
from tests.e2e.conftest import PASSWORD, Account, register

JSON = {"content-type": "application/json"}
PATIENT = {
    "mrn": "MRN-1",
    "given_name": "Ada",
    "family_name": "Byron",
    "date_of_birth": "1990-12-10",
    "sex": "female",
}
PATIENT_TEXT_FIELDS = ["mrn", "given_name", "family_name", "address", "ssn", "notes"]
LATE = "9999-12-31T23:00:00-05:00"  # year 10000 in UTC
EARLY = "0001-01-01T01:00:00+05:00"  # year 0 in UTC


def raw(value: dict[str, Any]) -> bytes:
    """JSON as a client may send it: lone surrogates escaped (``"\\ud800"``), not refused."""
    return json.dumps(value).encode()


def error_lines(since: int) -> list[str]:
    return [
        line
        for line in LOGS.text(since).splitlines()
        if '"level": "error"' in line or "Traceback" in line
    ]


def assert_refused(response: httpx.Response, status: int, loc: list[Any] | None = None) -> None:
    assert response.status_code == status, response.text
    if loc is not None:
        assert loc in [d["loc"] for d in response.json()["error"]["details"]], response.text


async def _patient(client: httpx.AsyncClient, admin: Account) -> dict[str, Any]:
    body = {**PATIENT, "mrn": f"MRN-{uuid.uuid4().hex[:10]}"}
    created = await client.post("/api/v1/patients", json=body, headers=admin.headers)
    assert created.status_code == 201, created.text
    result: dict[str, Any] = created.json()
    return result


# -- deep JSON, before authentication ---------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/v1/auth/login", "/api/v1/auth/register", "/api/v1/patients"]
)
async def test_json_nested_tens_of_thousands_deep_is_a_400_without_a_logged_error(
    client: httpx.AsyncClient, path: str
) -> None:
    since = LOGS.mark()
    for body in (b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 30_000 + b"1" + b"}" * 30_000):
        response = await client.post(path, content=body, headers=JSON)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "json_too_deep"
    assert error_lines(since) == []


async def test_json_within_the_depth_bound_still_reaches_validation(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/api/v1/auth/login", content=b"[" * 20 + b"]" * 20, headers=JSON)
    assert response.status_code == 422


# -- text that cannot be stored -----------------------------------------------------------


@pytest.mark.parametrize("field", PATIENT_TEXT_FIELDS)
@pytest.mark.parametrize("bad", ["\ud800", "x\udfffy", "a\x00b"])
async def test_a_patient_field_that_cannot_be_stored_is_a_422_naming_it(
    client: httpx.AsyncClient, field: str, bad: str
) -> None:
    admin = await register(client)
    created = await client.post(
        "/api/v1/patients", content=raw({**PATIENT, field: bad}), headers=admin.headers | JSON
    )
    assert_refused(created, 422, ["body", field])
    patient = await _patient(client, admin)
    patched = await client.patch(
        f"/api/v1/patients/{patient['id']}",
        content=raw({field: bad, "version": patient["version"]}),
        headers=admin.headers | JSON,
    )
    assert_refused(patched, 422, ["body", field])


async def test_an_appointment_reason_that_cannot_be_stored_is_a_422(
    client: httpx.AsyncClient,
) -> None:
    admin = await register(client)
    body = {
        "patient_id": str(uuid.uuid4()),
        "clinician_id": str(uuid.uuid4()),
        "start_at": "2030-01-01T09:00:00Z",
        "end_at": "2030-01-01T09:30:00Z",
        "reason": "check-up \ud800",
    }
    response = await client.post(
        "/api/v1/appointments", content=raw(body), headers=admin.headers | JSON
    )
    assert_refused(response, 422, ["body", "reason"])


async def test_an_unknown_key_is_named_only_when_it_looks_like_a_field_name(
    client: httpx.AsyncClient,
) -> None:
    admin = await register(client)
    for key, shown in [("nickname", "nickname"), ("Zoë 555-0100", "?"), ("\ud800", None)]:
        body = raw({**PATIENT, key: 1})
        response = await client.post("/api/v1/patients", content=body, headers=admin.headers | JSON)
        assert response.status_code == 422, response.text
        locs = [d["loc"] for d in response.json()["error"]["details"]]
        if shown is not None:
            assert ["body", shown] in locs
        assert "555-0100" not in response.text
        assert "\\ud800" not in response.text


# -- names that display as something else -------------------------------------------------


@pytest.mark.parametrize("trick", ["\u202e", "\u2066", "\u2069", "\u200b", "\u200d"])
async def test_invisible_formatting_is_refused_in_every_kind_of_name(
    client: httpx.AsyncClient, trick: str
) -> None:
    admin = await register(client)
    name = f"{trick}Mallory"
    patient = await client.post(
        "/api/v1/patients", json={**PATIENT, "family_name": name}, headers=admin.headers
    )
    assert_refused(patient, 422, ["body", "family_name"])
    user = await client.post(
        "/api/v1/users",
        json={
            "email": f"u-{uuid.uuid4().hex[:8]}@clinic.example",
            "password": PASSWORD,
            "full_name": name,
            "role": "doctor",
        },
        headers=admin.headers,
    )
    assert_refused(user, 422, ["body", "full_name"])
    clinic = await client.post(
        "/api/v1/auth/register",
        json={
            "clinic_name": name,
            "email": f"r-{uuid.uuid4().hex[:8]}@clinic.example",
            "password": PASSWORD,
            "full_name": "Ada",
        },
    )
    assert_refused(clinic, 422, ["body", "clinic_name"])


async def test_a_joiner_inside_a_name_is_part_of_the_name(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    name = "علی‌رضا"  # Alireza, written with a zero-width non-joiner
    created = await client.post(
        "/api/v1/patients",
        json={**PATIENT, "given_name": name, "mrn": "ZWNJ-1"},
        headers=admin.headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["given_name"] == name


# -- instants outside years 1-9999 in UTC -------------------------------------------------


@pytest.mark.parametrize("stamp", [LATE, EARLY])
async def test_appointment_times_outside_the_utc_range_are_a_422_naming_the_field(
    client: httpx.AsyncClient, stamp: str
) -> None:
    admin = await register(client)
    body = {
        "patient_id": str(uuid.uuid4()),
        "clinician_id": str(uuid.uuid4()),
        "start_at": stamp,
        "end_at": "2030-01-01T09:30:00Z",
    }
    created = await client.post("/api/v1/appointments", json=body, headers=admin.headers)
    assert_refused(created, 422, ["body", "start_at"])
    for name in ("start", "end"):
        listed = await client.get(
            "/api/v1/appointments", params={name: stamp}, headers=admin.headers
        )
        assert_refused(listed, 422, ["query", name])


@pytest.mark.parametrize(("name", "stamp"), [("from", LATE), ("to", EARLY), ("from", EARLY)])
async def test_audit_bounds_outside_the_utc_range_are_a_422_naming_the_field(
    client: httpx.AsyncClient, name: str, stamp: str
) -> None:
    admin = await register(client)
    response = await client.get("/api/v1/admin/audit", params={name: stamp}, headers=admin.headers)
    assert_refused(response, 422, ["query", name])


async def test_an_audit_action_filter_that_cannot_be_stored_is_a_422(
    client: httpx.AsyncClient,
) -> None:
    admin = await register(client)
    response = await client.get(
        "/api/v1/admin/audit", params={"action": "auth.login\x00"}, headers=admin.headers
    )
    assert_refused(response, 422, ["query", "action"])
