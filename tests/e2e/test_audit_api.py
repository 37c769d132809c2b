"""The audit trail over HTTP: what each action records, the admin query and its filters and
cursors, clinic isolation, and chain verification."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
from structlog.testing import capture_logs

from tests.e2e.conftest import PASSWORD, Account, login, register, staff

AUDIT = "/api/v1/admin/audit"
PATIENTS = "/api/v1/patients"
CLIENT_ADDR = "127.0.0.1"  # httpx's ASGI transport


async def events(client: httpx.AsyncClient, admin: Account, **params: Any) -> list[dict[str, Any]]:
    """Every event matching ``params``, walking the cursor (oldest first unless told)."""
    params.setdefault("order", "asc")
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(200):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = await client.get(AUDIT, params=query, headers=admin.headers)
        assert page.status_code == 200, page.text
        found.extend(page.json()["items"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return found
    raise AssertionError("pagination did not terminate")


async def test_every_patient_action_is_recorded_with_who_and_where(
    client: httpx.AsyncClient,
) -> None:
    admin = await register(client)
    doctor_user, doctor = await staff(client, admin, "doctor")
    desk_user, desk = await staff(client, admin, "receptionist")
    body = {
        "mrn": "MRN-A1",
        "given_name": "Ada",
        "family_name": "Lovelace",
        "date_of_birth": "1990-12-10",
        "sex": "female",
        "ssn": "123-45-6789",
        "notes": "diabetic",
    }
    created = await client.post(PATIENTS, json=body, headers=doctor)
    assert created.status_code == 201
    url = f"{PATIENTS}/{created.json()['id']}"
    desk_read = await client.get(url, headers=desk)
    doctor_read = await client.get(url, headers=doctor)
    updated = await client.patch(
        url, json={"phone": "+14155552671"}, headers={**doctor, "If-Match": '"1"'}
    )
    assert updated.status_code == 200
    deleted = await client.delete(url, headers=doctor)
    assert deleted.status_code == 204

    trail = await events(client, admin, patient_id=created.json()["id"])
    doctor_id, desk_id = doctor_user["id"], desk_user["id"]
    # Writes load the row first (an audited read of their own), then write it.
    assert [(e["action"], e["actor_id"], e["request_id"]) for e in trail] == [
        ("phi.create", doctor_id, created.headers["x-request-id"]),
        ("phi.read_masked", desk_id, desk_read.headers["x-request-id"]),
        ("phi.read", doctor_id, doctor_read.headers["x-request-id"]),
        ("phi.read", doctor_id, updated.headers["x-request-id"]),
        ("phi.update", doctor_id, updated.headers["x-request-id"]),
        ("phi.read", doctor_id, deleted.headers["x-request-id"]),
        ("phi.delete", doctor_id, deleted.headers["x-request-id"]),
    ]
    for event in trail:
        assert event["resource_type"] == "patients"
        assert event["resource_id"] == created.json()["id"]
        assert event["clinic_id"] == admin.clinic["id"]
        assert event["client_addr"] == CLIENT_ADDR
        assert event["outcome"] == "success"
        assert event["purpose"] == "patient_care"
        assert event["actor_role"] == ("receptionist" if event["actor_id"] == desk_id else "doctor")
    assert {"ssn", "notes", "mrn"} <= set(trail[0]["phi_fields"])
    assert trail[4]["phi_fields"] == ["phone"]
    assert "ssn" in trail[1]["phi_fields"]
    stamps = [(e["occurred_at"], e["id"]) for e in trail]
    assert stamps == sorted(stamps)


async def test_export_records_one_export_row_per_page_in_the_reading_transaction(
    client: httpx.AsyncClient,
) -> None:
    admin = await register(client)
    doctor_user, doctor = await staff(client, admin, "doctor")
    made = []
    for i in range(3):
        body = {
            "mrn": f"MRN-E{i}",
            "given_name": "Ada",
            "family_name": f"Export{i}",
            "date_of_birth": "1990-12-10",
            "sex": "female",
        }
        made.append((await client.post(PATIENTS, json=body, headers=doctor)).json()["id"])
    first = await client.get(f"{PATIENTS}/export", params={"limit": 2}, headers=doctor)
    second = await client.get(
        f"{PATIENTS}/export",
        params={"limit": 2, "cursor": first.json()["next_cursor"]},
        headers=doctor,
    )
    assert second.json()["next_cursor"] is None

    exports = await events(client, admin, action="phi.export")
    assert [(e["reason"], e["request_id"]) for e in exports] == [
        ("exported 2 patient(s)", first.headers["x-request-id"]),
        ("exported 1 patient(s)", second.headers["x-request-id"]),
    ]
    for export in exports:
        assert export["actor_id"] == doctor_user["id"]
        assert export["actor_role"] == "doctor"
        assert export["purpose"] == "export"
        assert export["resource_type"] == "patients"
        assert export["resource_id"] is None
        assert {"ssn", "notes"} <= set(export["phi_fields"])
    # Every exported patient was also read, by the same request, and only those: the row a
    # page loads past its end to learn whether another page follows is never returned, so
    # it is not recorded as read.
    reads = await events(client, admin, action="phi.read", actor_id=doctor_user["id"])
    by_request: dict[str, list[str]] = {e["request_id"]: [] for e in exports}
    for read in reads:
        if read["request_id"] in by_request:
            by_request[read["request_id"]].append(read["resource_id"])
    assert by_request[first.headers["x-request-id"]] == made[:2]
    assert by_request[second.headers["x-request-id"]] == made[2:]
    assert [p["id"] for p in first.json()["items"]] == made[:2]
    # The admin's export leaves out the notes, and its row says so.
    await client.get(f"{PATIENTS}/export", headers=admin.headers)
    admin_export = (await events(client, admin, action="phi.export", order="desc"))[0]
    assert admin_export["actor_role"] == "clinic_admin"
    assert "notes" not in admin_export["phi_fields"]
    assert "ssn" in admin_export["phi_fields"]


async def test_filters_and_cursor_pagination(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    doctor_user, doctor = await staff(client, admin, "doctor")
    ids = []
    for i in range(4):
        body = {
            "mrn": f"MRN-F{i}",
            "given_name": "Ada",
            "family_name": "Filter",
            "date_of_birth": "1990-12-10",
            "sex": "female",
        }
        ids.append((await client.post(PATIENTS, json=body, headers=doctor)).json()["id"])
    await client.get(f"{PATIENTS}/{ids[0]}", headers=admin.headers)

    everything = await events(client, admin)
    newest_first = await events(client, admin, order="desc", limit=3)
    assert [e["id"] for e in newest_first] == [e["id"] for e in reversed(everything)]
    # Several chain lanes per clinic: (lane, seq) is unique, time orders the listing.
    assert len({(e["lane"], e["seq"]) for e in everything}) == len(everything)
    stamps = [(e["occurred_at"], e["id"]) for e in everything]
    assert stamps == sorted(stamps)
    assert [e["id"] for e in await events(client, admin, limit=1)] == [e["id"] for e in everything]

    creates = await events(client, admin, action="phi.create")
    assert [e["resource_id"] for e in creates] == ids
    mine = await events(client, admin, actor_id=doctor_user["id"])
    assert {e["actor_id"] for e in mine} == {doctor_user["id"]}
    assert {e["action"] for e in mine} == {"phi.create", "auth.login"}
    about = await events(client, admin, patient_id=ids[0])
    # The admin does not see clinical notes: a masked read.
    assert [(e["action"], e["actor_role"]) for e in about] == [
        ("phi.create", "doctor"),
        ("phi.read_masked", "clinic_admin"),
    ]
    assert await events(client, admin, patient_id=str(uuid.uuid4())) == []

    # Time bounds: from is inclusive, to exclusive.
    pivot = creates[2]
    at = pivot["occurred_at"]
    since = await events(client, admin, **{"from": at, "action": "phi.create"})
    assert [e["id"] for e in since] == [e["id"] for e in creates[2:]]
    before = await events(client, admin, to=at, action="phi.create")
    assert [e["id"] for e in before] == [e["id"] for e in creates[:2]]
    later = dt.datetime.fromisoformat(at) + dt.timedelta(days=1)
    assert await events(client, admin, **{"from": later.isoformat()}) == []

    # A cursor continues only the order it was made for; mangled ones are refused.
    page = await client.get(AUDIT, params={"limit": 1}, headers=admin.headers)
    cursor = page.json()["next_cursor"]
    assert cursor
    for params in (
        {"cursor": cursor, "order": "asc"},
        {"cursor": cursor[:-2]},
        {"cursor": "not a cursor"},
        {"from": "2024-01-01T00:00:00"},  # naive: no offset
        {"from": at, "to": at},
        {"limit": 0},
        {"limit": 201},
        {"order": "sideways"},
        {"actor_id": "nobody"},
    ):
        bad = await client.get(AUDIT, params=params, headers=admin.headers)
        assert bad.status_code == 422, (params, bad.text)
        assert set(bad.json()) == {"error"}


async def test_only_clinic_admins_may_read_or_verify(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    for role in ("doctor", "nurse", "receptionist"):
        _, headers = await staff(client, admin, role)
        listed = await client.get(AUDIT, headers=headers)
        verified = await client.post(f"{AUDIT}/verify", headers=headers)
        assert (listed.status_code, verified.status_code) == (403, 403), role
        assert listed.json()["error"]["code"] == "forbidden"
    assert (await client.get(AUDIT)).status_code == 401
    assert (await client.post(f"{AUDIT}/verify")).status_code == 401


async def test_another_clinics_events_are_never_visible(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    bob = await register(client)
    body = {
        "mrn": "MRN-I1",
        "given_name": "Ada",
        "family_name": "Private",
        "date_of_birth": "1990-12-10",
        "sex": "female",
    }
    theirs = (await client.post(PATIENTS, json=body, headers=alice.headers)).json()
    await client.get(f"{PATIENTS}/{theirs['id']}", headers=alice.headers)

    alices = await events(client, alice)
    bobs = await events(client, bob)
    assert alices
    assert bobs  # registration and login
    assert {e["clinic_id"] for e in bobs} == {bob.clinic["id"]}
    assert not {e["id"] for e in alices} & {e["id"] for e in bobs}
    assert await events(client, bob, patient_id=theirs["id"]) == []
    assert await events(client, bob, actor_id=alice.user["id"]) == []
    # Each clinic verifies its own chain only.
    for account, own in ((alice, alices), (bob, bobs)):
        result = await client.post(f"{AUDIT}/verify", headers=account.headers)
        assert result.status_code == 200
        assert result.json() == {"ok": True, "checked": len(own), "first_bad": None}


async def test_auth_events_are_recorded(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    created = await client.post(
        "/api/v1/users",
        json={
            "email": f"nurse-{uuid.uuid4().hex[:8]}@clinic.example",
            "password": PASSWORD,
            "full_name": "Nia Nurse",
            "role": "nurse",
        },
        headers=admin.headers,
    )
    assert created.status_code == 201
    nurse = created.json()
    email = nurse["email"]

    wrong = await client.post("/api/v1/auth/login", json={"email": email, "password": "nope"})
    assert wrong.status_code == 401
    with capture_logs() as logs:
        unknown = await client.post(
            "/api/v1/auth/login",
            json={"email": f"ghost-{uuid.uuid4().hex[:8]}@clinic.example", "password": "nope"},
        )
    assert unknown.status_code == 401
    assert any(
        line["event"] == "login_failed_unknown_account"
        and line["request_id"] == unknown.headers["x-request-id"]
        for line in logs
    )
    ok = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert ok.status_code == 200
    token = ok.json()["refresh_token"]
    rotated = await client.post("/api/v1/auth/refresh", json={"refresh_token": token})
    assert rotated.status_code == 200
    reused = await client.post("/api/v1/auth/refresh", json={"refresh_token": token})
    assert reused.status_code == 401
    promoted = await client.patch(
        f"/api/v1/users/{nurse['id']}", json={"role": "doctor"}, headers=admin.headers
    )
    assert promoted.status_code == 200
    same = await client.patch(
        f"/api/v1/users/{nurse['id']}", json={"role": "doctor"}, headers=admin.headers
    )
    assert same.status_code == 200

    trail = [e for e in await events(client, admin) if e["action"] != "phi.read"]
    summary = [(e["action"], e["actor_id"], e["actor_role"], e["outcome"]) for e in trail]
    admin_id, nurse_id = admin.user["id"], nurse["id"]
    assert summary == [
        ("clinic.create", None, "clinic_admin", "success"),  # registration: no actor yet
        ("user.create", None, "clinic_admin", "success"),
        ("auth.login", admin_id, "clinic_admin", "success"),
        ("user.create", admin_id, "clinic_admin", "success"),
        ("auth.login_failed", nurse_id, "nurse", "failure"),
        ("auth.login", nurse_id, "nurse", "success"),
        ("auth.refresh_reuse", nurse_id, "nurse", "denied"),
        ("user.role_change", admin_id, "clinic_admin", "success"),
        ("user.update", admin_id, "clinic_admin", "success"),
    ]
    by_action = {e["action"]: e for e in trail}
    assert trail[0]["resource_id"] == admin.clinic["id"]
    assert trail[1]["resource_id"] == admin_id
    assert trail[3]["resource_id"] == nurse_id
    assert trail[3]["request_id"] == created.headers["x-request-id"]
    # Writes to clinics and users name the fields written, never their values.
    assert trail[0]["reason"] == "fields: active, id, name"
    assert (
        trail[3]["reason"] == "fields: active, clinic_id, email, full_name, id, password_hash, role"
    )
    assert by_action["user.update"]["reason"] == "fields: role"
    assert by_action["auth.login_failed"]["request_id"] == wrong.headers["x-request-id"]
    assert by_action["auth.login_failed"]["reason"] == "wrong password"
    assert by_action["auth.login"]["request_id"] == ok.headers["x-request-id"]
    assert by_action["auth.refresh_reuse"]["request_id"] == reused.headers["x-request-id"]
    assert by_action["auth.refresh_reuse"]["resource_type"] == "refresh_tokens"
    assert by_action["user.role_change"]["reason"] == "nurse -> doctor"
    assert by_action["user.role_change"]["request_id"] == promoted.headers["x-request-id"]
    assert all(e["client_addr"] == CLIENT_ADDR for e in trail)
    assert all(e["clinic_id"] == admin.clinic["id"] for e in trail)
    # The promoted user logs in as a doctor from now on.
    await login(client, email, PASSWORD)
    last = (await events(client, admin, action="auth.login", order="desc"))[0]
    assert (last["actor_id"], last["actor_role"]) == (nurse_id, "doctor")


async def test_a_clinic_anchors_its_chain_and_verifies_against_the_anchor(
    client: httpx.AsyncClient,
) -> None:
    """The API forwards the anchor to the library's check (whose detection of deleted and
    rewritten rows is proven against real tampering in tests/integration/test_audit_anchor.py);
    here, anchors that no longer match the chain must fail."""
    admin = await register(client)
    taken = await client.get(f"{AUDIT}/anchor", headers=admin.headers)
    assert taken.status_code == 200, taken.text
    anchor = taken.json()
    assert anchor["format"] == "healthdb-audit-anchor/1"
    assert {h["clinic_id"] for h in anchor["heads"]} == {admin.clinic["id"]}
    await client.get(f"{AUDIT}", headers=admin.headers)  # rows after the anchor are fine
    await login(client, admin.email, PASSWORD)

    intact = await client.post(f"{AUDIT}/verify", json=anchor, headers=admin.headers)
    assert intact.status_code == 200, intact.text
    assert intact.json()["ok"] is True

    head = anchor["heads"][0]
    beyond = {**anchor, "heads": [{**head, "seq": head["seq"] + 1000}]}
    missing = (await client.post(f"{AUDIT}/verify", json=beyond, headers=admin.headers)).json()
    assert missing["ok"] is False
    assert missing["first_bad"]["seq"] == head["seq"] + 1000
    assert "deleted from the end" in missing["first_bad"]["reason"]

    forged = {**anchor, "heads": [{**head, "row_hash": "0" * 64}]}
    rewritten = (await client.post(f"{AUDIT}/verify", json=forged, headers=admin.headers)).json()
    assert rewritten["ok"] is False
    assert "rewritten" in rewritten["first_bad"]["reason"]


async def test_bad_or_foreign_anchors_are_422(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    bob = await register(client)
    bobs = (await client.get(f"{AUDIT}/anchor", headers=bob.headers)).json()
    foreign = await client.post(f"{AUDIT}/verify", json=bobs, headers=alice.headers)
    assert foreign.status_code == 422, foreign.text
    assert "another clinic" in foreign.json()["error"]["message"]
    head = bobs["heads"][0]
    for bad in (
        {"format": "something-else", "taken_at": bobs["taken_at"], "heads": []},
        {**bobs, "heads": [{**head, "seq": 0}]},
        {**bobs, "heads": [{**head, "row_hash": "xyz"}]},
        {**bobs, "taken_at": "yesterday"},
        {**bobs, "extra": 1},
    ):
        answer = await client.post(f"{AUDIT}/verify", json=bad, headers=bob.headers)
        assert answer.status_code == 422, (bad, answer.text)
        assert set(answer.json()) == {"error"}
    not_json = await client.post(
        f"{AUDIT}/verify",
        content=b"{not json",
        headers={**bob.headers, "Content-Type": "application/json"},
    )
    assert not_json.status_code == 422
    _, doctor = await staff(client, bob, "doctor")
    assert (await client.get(f"{AUDIT}/anchor", headers=doctor)).status_code == 403
