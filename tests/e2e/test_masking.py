"""The masking policy through the API, role by role: reads, lists, SSN lookups and exports
all show each role exactly what ``healthdb.phi.POLICY`` says, and writes follow it too.

Policy (SSN / clinical notes): clinic_admin full / none, doctor full / full, nurse partial
/ full, receptionist partial / none. Every other PHI field is shown in full to every role.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from healthdb import Role
from healthdb.models import Patient
from healthdb.phi import POLICY, PhiKind, Visibility, phi_fields
from tests.e2e.conftest import Account, register, staff

BASE = "/api/v1/patients"
SSN = "123-45-6789"
NOTES = "Type 2 diabetes; metformin 500 mg."
FULL_RECORD = {
    "mrn": "MRN-MASK-1",
    "given_name": "Ada",
    "family_name": "Lovelace",
    "date_of_birth": "1990-12-10",
    "sex": "female",
    "phone": "+14155552671",
    "email": "ada@example.org",
    "address": "12 St James's Square, London",
    "ssn": SSN,
    "notes": NOTES,
}

#: What each role must see of the SSN and of the notes (the documented table).
EXPECTED = {
    "clinic_admin": (SSN, None),
    "doctor": (SSN, NOTES),
    "nurse": ("***-**-6789", NOTES),
    "receptionist": ("***-**-6789", None),
}


def test_the_expected_table_is_the_library_policy() -> None:
    """The API tests below check the documented table; the library must agree with it."""
    for role, (ssn, notes) in EXPECTED.items():
        row = POLICY[Role(role)]
        assert row[PhiKind.SSN] is (Visibility.FULL if ssn == SSN else Visibility.PARTIAL)
        assert row[PhiKind.CLINICAL_NOTE] is (Visibility.FULL if notes else Visibility.NONE)
        # Export files: only the roles that may export see them (masked when written).
        exporter = role in ("clinic_admin", "doctor")
        assert row[PhiKind.BULK_EXPORT] is (Visibility.FULL if exporter else Visibility.NONE)
        special = (PhiKind.SSN, PhiKind.CLINICAL_NOTE, PhiKind.BULK_EXPORT)
        others = {k: v for k, v in row.items() if k not in special}
        assert set(others.values()) == {Visibility.FULL}, role


async def _team(client: httpx.AsyncClient) -> tuple[Account, dict[str, dict[str, str]]]:
    admin = await register(client)
    headers = {"clinic_admin": admin.headers}
    for role in ("doctor", "nurse", "receptionist"):
        _, headers[role] = await staff(client, admin, role)
    return admin, headers


async def _charted(client: httpx.AsyncClient, doctor: dict[str, str]) -> dict[str, Any]:
    created = await client.post(BASE, json=FULL_RECORD, headers=doctor)
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    assert (body["ssn"], body["notes"]) == (SSN, NOTES)
    return body


def _check(role: str, patient: dict[str, Any]) -> None:
    ssn, notes = EXPECTED[role]
    assert (patient["ssn"], patient["notes"]) == (ssn, notes), role
    for field in ("given_name", "family_name", "phone", "email", "address"):
        assert patient[field] == FULL_RECORD[field], (role, field)


@pytest.mark.parametrize("role", sorted(EXPECTED))
async def test_get_list_and_ssn_lookup_are_masked_per_role(
    client: httpx.AsyncClient, role: str
) -> None:
    _, team = await _team(client)
    patient = await _charted(client, team["doctor"])
    headers = team[role]

    fetched = await client.get(f"{BASE}/{patient['id']}", headers=headers)
    assert fetched.status_code == 200
    _check(role, fetched.json())
    listed = await client.get(BASE, headers=headers)
    assert [p["id"] for p in listed.json()["items"]] == [patient["id"]]
    _check(role, listed.json()["items"][0])
    found = await client.post(f"{BASE}/ssn-lookup", json={"ssn": SSN}, headers=headers)
    assert [p["id"] for p in found.json()["items"]] == [patient["id"]]
    _check(role, found.json()["items"][0])


@pytest.mark.parametrize("role", ["clinic_admin", "doctor"])
async def test_export_is_masked_like_every_other_read(client: httpx.AsyncClient, role: str) -> None:
    _, team = await _team(client)
    first = await _charted(client, team["doctor"])
    second = await client.post(
        BASE, json={**FULL_RECORD, "mrn": "MRN-MASK-2"}, headers=team["doctor"]
    )
    assert second.status_code == 201

    exported: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = await client.get(f"{BASE}/export", params=params, headers=team[role])
        assert page.status_code == 200, page.text
        exported.extend(page.json()["items"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    # Oldest first, each patient once.
    assert [p["id"] for p in exported] == [first["id"], second.json()["id"]]
    for patient in exported:
        _check(role, patient)


@pytest.mark.parametrize("role", ["nurse", "receptionist"])
async def test_export_is_for_admins_and_doctors_only(client: httpx.AsyncClient, role: str) -> None:
    _, team = await _team(client)
    await _charted(client, team["doctor"])
    refused = await client.get(f"{BASE}/export", headers=team[role])
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert (await client.get(f"{BASE}/export")).status_code == 401


@pytest.mark.parametrize("role", sorted(EXPECTED))
async def test_writes_follow_the_policy(client: httpx.AsyncClient, role: str) -> None:
    """A role may write what it may at least partly see: the notes only where visible."""
    _, team = await _team(client)
    patient = await _charted(client, team["doctor"])
    url = f"{BASE}/{patient['id']}"
    headers = {**team[role], "If-Match": '"1"'}
    may_write_notes = EXPECTED[role][1] is not None

    notes = await client.patch(url, json={"notes": "reviewed"}, headers=headers)
    assert notes.status_code == (200 if may_write_notes else 403), notes.text
    version = 2 if may_write_notes else 1
    ssn = await client.patch(
        url, json={"ssn": "987-65-4321"}, headers={**team[role], "If-Match": f'"{version}"'}
    )
    assert ssn.status_code == 200, ssn.text
    assert ssn.json()["ssn"] in ("987-65-4321", "***-**-4321")
    _check_stored(
        (await client.get(url, headers=team["doctor"])).json(),
        notes="reviewed" if may_write_notes else NOTES,
    )


def _check_stored(patient: dict[str, Any], *, notes: str) -> None:
    assert patient["ssn"] == "987-65-4321"
    assert patient["notes"] == notes


def test_every_patient_phi_field_is_in_the_response_body() -> None:
    """Masking is checked on the response, so the response must carry every PHI field."""
    from healthdb_api.schemas import PatientOut

    assert set(phi_fields(Patient)) <= set(PatientOut.model_fields)
