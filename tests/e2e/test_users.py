"""Users end to end: an admin manages staff of their own clinic, and only of it."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import PASSWORD, login, register, staff
from tests.e2e.test_patients import patient_body

USERS = "/api/v1/users"
PATIENTS = "/api/v1/patients"
AUTH = "/api/v1/auth"


def _body(role: str = "doctor", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "email": f"{role}-{uuid.uuid4().hex[:10]}@clinic.example",
        "password": PASSWORD,
        "full_name": "Sam Staff",
        "role": role,
    }
    body.update(fields)
    return body


@pytest.mark.parametrize("role", ["clinic_admin", "doctor", "nurse", "receptionist"])
async def test_admin_creates_staff(client: httpx.AsyncClient, role: str) -> None:
    admin = await register(client)
    user, headers = await staff(client, admin, role)
    assert set(user) == {"id", "email", "full_name", "role", "clinic_id", "active", "created_at"}
    assert user["role"] == role
    assert user["clinic_id"] == admin.clinic["id"]
    assert user["active"] is True
    me = await client.get(f"{AUTH}/me", headers=headers)
    assert me.status_code == 200
    assert me.json() == user


@pytest.mark.parametrize("role", ["doctor", "nurse", "receptionist"])
async def test_non_admins_cannot_create_users(client: httpx.AsyncClient, role: str) -> None:
    admin = await register(client)
    _, headers = await staff(client, admin, role)
    response = await client.post(USERS, json=_body("doctor"), headers=headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


async def test_creating_users_needs_a_token(client: httpx.AsyncClient) -> None:
    assert (await client.post(USERS, json=_body())).status_code == 401


@pytest.mark.parametrize("role", ["superuser", "admin", "", "CLINIC_ADMIN"])
async def test_unknown_roles_are_422(client: httpx.AsyncClient, role: str) -> None:
    admin = await register(client)
    response = await client.post(USERS, json=_body(role=role), headers=admin.headers)
    assert response.status_code == 422


async def test_weak_staff_password_is_422(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    body = _body(password="password1234")
    response = await client.post(USERS, json=body, headers=admin.headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "weak_password"
    assert "password1234" not in response.text


async def test_duplicate_staff_email_is_409_even_across_clinics(
    client: httpx.AsyncClient,
) -> None:
    admin = await register(client)
    other = await register(client)
    body = _body()
    assert (await client.post(USERS, json=body, headers=admin.headers)).status_code == 201
    again = await client.post(USERS, json=body, headers=admin.headers)
    assert again.status_code == 409
    elsewhere = await client.post(USERS, json=body, headers=other.headers)
    assert elsewhere.status_code == 409
    assert again.content == elsewhere.content
    taken = {**body, "email": other.email.upper()}
    assert (await client.post(USERS, json=taken, headers=admin.headers)).status_code == 409


async def test_list_users_pages_through_the_clinic_only(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    other = await register(client)
    await staff(client, other, "doctor")
    created = [(await staff(client, admin, role))[0] for role in ("doctor", "nurse")]
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 1}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(USERS, params=params, headers=admin.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [u["id"] for u in seen] == [admin.user["id"], *(u["id"] for u in created)]
    assert {u["clinic_id"] for u in seen} == {admin.clinic["id"]}


async def test_list_users_is_admin_only_and_validates_input(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    _, nurse = await staff(client, admin, "nurse")
    assert (await client.get(USERS, headers=nurse)).status_code == 403
    bad_cursor = await client.get(USERS, params={"cursor": "nope"}, headers=admin.headers)
    assert bad_cursor.status_code == 422
    bad_limit = await client.get(USERS, params={"limit": 0}, headers=admin.headers)
    assert bad_limit.status_code == 422


async def test_patch_changes_role_and_name(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    user, _ = await staff(client, admin, "nurse")
    response = await client.patch(
        f"{USERS}/{user['id']}",
        json={"role": "doctor", "full_name": "  Dr Sam  "},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "doctor"
    assert response.json()["full_name"] == "Dr Sam"
    # The next login carries the new role.
    tokens = await login(client, user["email"], PASSWORD)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await client.get(f"{AUTH}/me", headers=headers)).json()["role"] == "doctor"


async def test_deactivation_blocks_login_and_revokes_sessions(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    user, _ = await staff(client, admin, "doctor")
    tokens = await login(client, user["email"], PASSWORD)
    response = await client.patch(
        f"{USERS}/{user['id']}", json={"active": False}, headers=admin.headers
    )
    assert response.status_code == 200
    assert response.json()["active"] is False
    refused = await client.post(
        f"{AUTH}/login", json={"email": user["email"], "password": PASSWORD}
    )
    unknown = await client.post(
        f"{AUTH}/login", json={"email": f"x-{uuid.uuid4().hex}@clinic.example", "password": "p"}
    )
    assert refused.status_code == 401
    assert refused.content == unknown.content
    refresh = await client.post(f"{AUTH}/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refresh.status_code == 401
    me = await client.get(
        f"{AUTH}/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert me.status_code == 401


async def test_patch_of_another_clinics_user_is_404_like_a_missing_one(
    client: httpx.AsyncClient,
) -> None:
    admin = await register(client)
    other = await register(client)
    victim, _ = await staff(client, other, "doctor")
    foreign = await client.patch(
        f"{USERS}/{victim['id']}", json={"active": False}, headers=admin.headers
    )
    missing = await client.patch(
        f"{USERS}/{uuid.uuid4()}", json={"active": False}, headers=admin.headers
    )
    assert foreign.status_code == missing.status_code == 404
    assert foreign.content == missing.content
    assert (await client.get(f"{USERS}/{victim['id']}", headers=admin.headers)).status_code == 404
    # Untouched: the victim still logs in.
    await login(client, victim["email"], PASSWORD)


async def test_patch_is_admin_only(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    doctor, headers = await staff(client, admin, "doctor")
    response = await client.patch(
        f"{USERS}/{doctor['id']}", json={"role": "clinic_admin"}, headers=headers
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    "body", [{"role": "god"}, {"active": "maybe"}, {"email": "x@clinic.example"}, {"id": "x"}]
)
async def test_patch_rejects_bad_fields(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    admin = await register(client)
    user, _ = await staff(client, admin, "nurse")
    response = await client.patch(f"{USERS}/{user['id']}", json=body, headers=admin.headers)
    assert response.status_code == 422


async def test_the_last_admin_cannot_be_removed(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    own = f"{USERS}/{admin.user['id']}"
    demote = await client.patch(own, json={"role": "doctor"}, headers=admin.headers)
    assert demote.status_code == 409
    assert demote.json()["error"]["code"] == "last_admin"
    second, _ = await staff(client, admin, "clinic_admin")
    response = await client.patch(own, json={"active": False}, headers=admin.headers)
    assert response.status_code == 200
    assert second["role"] == "clinic_admin"


async def test_get_user_by_id(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    user, _ = await staff(client, admin, "receptionist")
    response = await client.get(f"{USERS}/{user['id']}", headers=admin.headers)
    assert response.status_code == 200
    assert response.json() == user
    assert (await client.get(f"{USERS}/not-a-uuid", headers=admin.headers)).status_code == 422


async def test_a_deactivated_users_access_token_stops_working_at_once(
    client: httpx.AsyncClient,
) -> None:
    """Not after the token's 15 minutes: the next request is refused on every route."""
    admin = await register(client)
    user, headers = await staff(client, admin, "doctor")
    assert (await client.get(PATIENTS, headers=headers)).status_code == 200  # now cached
    deactivated = await client.patch(
        f"{USERS}/{user['id']}", json={"active": False}, headers=admin.headers
    )
    assert deactivated.status_code == 200
    for method, url in (("GET", PATIENTS), ("POST", f"{PATIENTS}/ssn-lookup"), ("GET", USERS)):
        refused = await client.request(method, url, json={"ssn": "1"}, headers=headers)
        assert refused.status_code == 401, (url, refused.text)
    reactivated = await client.patch(
        f"{USERS}/{user['id']}", json={"active": True}, headers=admin.headers
    )
    assert reactivated.status_code == 200
    assert (await client.get(PATIENTS, headers=headers)).status_code == 200


async def test_a_role_change_applies_to_the_token_already_issued(
    client: httpx.AsyncClient,
) -> None:
    """A doctor demoted to receptionist sees the SSN masked and may not export, with the
    token issued while a doctor; the audit trail records the role in force."""
    admin = await register(client)
    user, headers = await staff(client, admin, "doctor")
    created = await client.post(PATIENTS, json=patient_body(ssn="123-45-6789"), headers=headers)
    assert created.status_code == 201, created.text
    url = f"{PATIENTS}/{created.json()['id']}"
    assert (await client.get(url, headers=headers)).json()["ssn"] == "123-45-6789"

    demoted = await client.patch(
        f"{USERS}/{user['id']}", json={"role": "receptionist"}, headers=admin.headers
    )
    assert demoted.status_code == 200
    after = await client.get(url, headers=headers)
    assert after.status_code == 200
    assert after.json()["ssn"] == "***-**-6789"
    assert after.json()["notes"] is None
    assert (await client.get(f"{PATIENTS}/export", headers=headers)).status_code == 403
    trail = await client.get(
        "/api/v1/admin/audit", params={"actor": user["id"]}, headers=admin.headers
    )
    reads = {(row["action"], row["actor_role"]) for row in trail.json()["items"]}
    assert {("phi.read", "doctor"), ("phi.read_masked", "receptionist")} <= reads, reads
