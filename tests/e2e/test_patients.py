"""Patients over HTTP: CRUD, search, pagination, versions, roles and clinic isolation."""

from __future__ import annotations

import datetime as dt
import unicodedata
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import register, staff

BASE = "/api/v1/patients"


# -- helpers -------------------------------------------------------------------------------


def patient_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "mrn": f"MRN-{uuid.uuid4().hex[:10]}",
        "given_name": "Ada",
        "family_name": "Lovelace",
        "date_of_birth": "1990-12-10",
        "sex": "female",
    }
    body.update(fields)
    return body


async def create(client: httpx.AsyncClient, headers: dict[str, str], **fields: Any) -> Any:
    response = await client.post(BASE, json=patient_body(**fields), headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def error_locs(response: httpx.Response) -> list[list[Any]]:
    assert response.status_code == 422, response.text
    return [d["loc"] for d in response.json()["error"]["details"]]


async def walk(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(BASE, params=query, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not terminate")


# -- create, read ------------------------------------------------------------------------


async def test_create_and_get_round_trip(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    # A doctor sees (and so may write) every field, clinical notes included.
    _, doctor = await staff(client, admin, "doctor")
    body = patient_body(
        phone="+1 (415) 555-2671",
        email="ada@example.org",
        address="12 St James's Square\u00a0London",
        ssn="123-45-6789",
        notes="Allergic to penicillin.\nSee chart.",
    )
    created = await client.post(BASE, json=body, headers=doctor)
    assert created.status_code == 201, created.text
    patient = created.json()
    assert patient["version"] == 1
    assert created.headers["etag"] == '"1"'
    assert created.headers["location"] == f"{BASE}/{patient['id']}"
    assert patient["phone"] == "+14155552671"
    for key in ("mrn", "given_name", "family_name", "date_of_birth", "sex", "email", "ssn"):
        assert patient[key] == body[key]
    assert patient["notes"] == body["notes"]
    assert patient["created_at"]
    assert patient["updated_at"]

    fetched = await client.get(f"{BASE}/{patient['id']}", headers=doctor)
    assert fetched.status_code == 200
    assert fetched.json() == patient
    assert fetched.headers["etag"] == '"1"'
    # The clinic admin sees the same patient without the clinical notes.
    as_admin = (await client.get(f"{BASE}/{patient['id']}", headers=admin.headers)).json()
    assert as_admin == {**patient, "notes": None}


async def test_injection_looking_data_round_trips_verbatim(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    _, doctor = await staff(client, admin, "doctor")
    hostile = {
        "given_name": "Robert'); DROP TABLE patients;--",
        "family_name": "O'Brien",
        "mrn": "1' OR '1'='1",
        "address": '"; DELETE FROM users; --',
        "notes": "<script>alert(1)</script> %_ \\ '",
    }
    patient = await create(client, doctor, **hostile)
    fetched = (await client.get(f"{BASE}/{patient['id']}", headers=doctor)).json()
    for key, value in hostile.items():
        assert fetched[key] == value

    by_name = await walk(client, admin.headers, name="O'B")
    assert [p["id"] for p in by_name] == [patient["id"]]
    by_name = await walk(client, admin.headers, name="robert'); drop")
    assert [p["id"] for p in by_name] == [patient["id"]]
    by_mrn = await walk(client, admin.headers, mrn="1' OR '1'='1")
    assert [p["id"] for p in by_mrn] == [patient["id"]]
    # LIKE wildcards in the query are literal, and the table is still there.
    assert await walk(client, admin.headers, name="%") == []
    assert await walk(client, admin.headers, name="_") == []
    other = await create(client, admin.headers)
    assert len(await walk(client, admin.headers)) == 2
    assert other["id"] != patient["id"]


async def test_strings_are_nfc_normalised_and_trimmed(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    decomposed = unicodedata.normalize("NFD", "José")
    assert decomposed != "José"
    patient = await create(
        client, admin.headers, given_name=f"  {decomposed} ", family_name="Ñúñez"
    )
    assert patient["given_name"] == "José"
    found = await walk(client, admin.headers, name=unicodedata.normalize("NFD", "Jos\u00e9"))
    assert [p["id"] for p in found] == [patient["id"]]


async def test_duplicate_mrn_is_409(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    await create(client, admin.headers, mrn="MRN-1")
    again = await client.post(BASE, json=patient_body(mrn="MRN-1"), headers=admin.headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "duplicate_mrn"
    # The same MRN in another clinic is fine.
    other = await register(client)
    await create(client, other.headers, mrn="MRN-1")


# -- search and pagination -----------------------------------------------------------------


async def test_search_by_name_prefix_mrn_and_dob(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    ada = await create(client, admin.headers, given_name="Ada", family_name="Lovelace")
    alan = await create(
        client, admin.headers, given_name="Alan", family_name="Turing", date_of_birth="1912-06-23"
    )
    grace = await create(
        client, admin.headers, given_name="Grace", family_name="Hopper", date_of_birth="1906-12-09"
    )

    def ids(items: list[dict[str, Any]]) -> set[str]:
        return {p["id"] for p in items}

    assert ids(await walk(client, admin.headers, name="a")) == {ada["id"], alan["id"]}
    assert ids(await walk(client, admin.headers, name="LOVE")) == {ada["id"]}
    assert ids(await walk(client, admin.headers, name="hop")) == {grace["id"]}
    assert ids(await walk(client, admin.headers, mrn=alan["mrn"])) == {alan["id"]}
    assert ids(await walk(client, admin.headers, date_of_birth="1906-12-09")) == {grace["id"]}
    assert ids(await walk(client, admin.headers, name="a", date_of_birth="1912-06-23")) == {
        alan["id"]
    }
    assert await walk(client, admin.headers, name="zzz") == []
    bad_dob = await client.get(BASE, params={"date_of_birth": "yesterday"}, headers=admin.headers)
    assert ["query", "date_of_birth"] in error_locs(bad_dob)


async def test_pagination_walks_every_patient_once(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    made = [
        await create(
            client,
            admin.headers,
            family_name=f"Family{i % 3}",
            date_of_birth=f"19{50 + i}-01-01",
        )
        for i in range(11)
    ]
    for sort in ("family_name", "-family_name", "date_of_birth", "-created_at", "mrn"):
        seen = await walk(client, admin.headers, limit=4, sort=sort)
        assert sorted(p["id"] for p in seen) == sorted(p["id"] for p in made), sort
    by_dob = [p["date_of_birth"] for p in await walk(client, admin.headers, sort="-date_of_birth")]
    assert by_dob == sorted(by_dob, reverse=True)

    first = await client.get(BASE, params={"limit": 4}, headers=admin.headers)
    assert len(first.json()["items"]) == 4
    assert first.json()["next_cursor"]


async def test_list_rejects_bad_sort_limit_and_cursor(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    await create(client, admin.headers)
    bad_sort = await client.get(BASE, params={"sort": "ssn"}, headers=admin.headers)
    assert bad_sort.status_code == 422
    error = bad_sort.json()["error"]
    assert "family_name" in error["message"]
    assert "date_of_birth" in error["message"]
    assert error["details"][0]["loc"] == ["query", "sort"]
    injected = await client.get(
        BASE, params={"sort": "family_name; DROP TABLE patients"}, headers=admin.headers
    )
    assert injected.status_code == 422
    for limit in (0, 201, "ten"):
        response = await client.get(BASE, params={"limit": limit}, headers=admin.headers)
        assert ["query", "limit"] in error_locs(response)
    bad_cursor = await client.get(BASE, params={"cursor": "not-a-cursor"}, headers=admin.headers)
    assert bad_cursor.status_code == 422
    # A cursor made for one sort order does not continue another.
    two = [await create(client, admin.headers) for _ in range(2)]
    assert two
    page = (await client.get(BASE, params={"limit": 1}, headers=admin.headers)).json()
    mixed = await client.get(
        BASE,
        params={"limit": 1, "cursor": page["next_cursor"], "sort": "mrn"},
        headers=admin.headers,
    )
    assert mixed.status_code == 422


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"phone": "12345"}, ["body", "phone"]),
        ({"phone": "+1 555 000"}, ["body", "phone"]),
        ({"phone": "call me maybe"}, ["body", "phone"]),
        ({"email": "not-an-email"}, ["body", "email"]),
        ({"email": "a@b"}, ["body", "email"]),
        ({"date_of_birth": "2999-01-01"}, ["body", "date_of_birth"]),
        ({"date_of_birth": "1990-02-30"}, ["body", "date_of_birth"]),
        ({"sex": "F"}, ["body", "sex"]),
        ({"given_name": ""}, ["body", "given_name"]),
        ({"family_name": "   "}, ["body", "family_name"]),
        ({"given_name": "x" * 201}, ["body", "given_name"]),
        ({"mrn": "m" * 65}, ["body", "mrn"]),
        ({"address": "a" * 501}, ["body", "address"]),
        ({"given_name": "Nul\x00byte"}, ["body", "given_name"]),
        ({"notes": "bell\x07"}, ["body", "notes"]),
        ({"favourite_colour": "blue"}, ["body", "favourite_colour"]),
    ],
)
async def test_invalid_fields_are_422_with_details(
    client: httpx.AsyncClient, fields: dict[str, Any], loc: list[Any]
) -> None:
    admin = await register(client)
    response = await client.post(BASE, json=patient_body(**fields), headers=admin.headers)
    assert loc in error_locs(response)
    body = response.json()["error"]
    assert body["code"] == "validation_error"
    # The rejected value is never echoed back (it may be PHI).
    for value in fields.values():
        if len(str(value)) > 3:
            assert str(value) not in response.text


async def test_future_dob_message(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).date().isoformat()
    response = await client.post(
        BASE, json=patient_body(date_of_birth=tomorrow), headers=admin.headers
    )
    assert response.status_code == 422
    assert "future" in response.json()["error"]["details"][0]["msg"]
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert (
        await client.post(BASE, json=patient_body(date_of_birth=today), headers=admin.headers)
    ).status_code == 201


async def test_malformed_ids_are_422(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    for method in ("GET", "PATCH", "DELETE"):
        response = await client.request(
            method,
            f"{BASE}/not-a-uuid",
            headers={**admin.headers, "If-Match": '"1"'},
            json={} if method == "PATCH" else None,
        )
        assert response.status_code == 422, (method, response.text)
        assert response.json()["error"]["details"][0]["loc"] == ["path", "patient_id"]


async def test_requires_authentication(client: httpx.AsyncClient) -> None:
    assert (await client.get(BASE)).status_code == 401
    assert (await client.post(BASE, json=patient_body())).status_code == 401
    bad = {"Authorization": "Bearer not.a.token"}
    assert (await client.get(f"{BASE}/{uuid.uuid4()}", headers=bad)).status_code == 401


# -- update and delete ---------------------------------------------------------------------


async def test_update_needs_current_version(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    patient = await create(client, admin.headers, phone="+14155552671")
    url = f"{BASE}/{patient['id']}"

    missing = await client.patch(url, json={"family_name": "Byron"}, headers=admin.headers)
    assert missing.status_code == 428
    assert missing.json()["error"]["code"] == "precondition_required"
    assert "If-Match" in missing.json()["error"]["message"]

    updated = await client.patch(
        url, json={"family_name": "Byron"}, headers={**admin.headers, "If-Match": '"1"'}
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["family_name"] == "Byron"
    assert updated.json()["version"] == 2
    assert updated.headers["etag"] == '"2"'
    assert updated.json()["given_name"] == patient["given_name"]

    stale = await client.patch(
        url, json={"family_name": "King"}, headers={**admin.headers, "If-Match": '"1"'}
    )
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "version_conflict"

    # The version may travel in the body instead; a bare number is accepted as If-Match.
    by_body = await client.patch(url, json={"phone": None, "version": 2}, headers=admin.headers)
    assert by_body.status_code == 200, by_body.text
    assert by_body.json()["phone"] is None
    assert by_body.json()["version"] == 3
    bare = await client.patch(
        url, json={"given_name": "Augusta"}, headers={**admin.headers, "If-Match": "3"}
    )
    assert bare.status_code == 200
    assert bare.json()["version"] == 4

    disagree = await client.patch(
        url, json={"given_name": "A", "version": 3}, headers={**admin.headers, "If-Match": '"4"'}
    )
    assert disagree.status_code == 422
    garbage = await client.patch(
        url, json={"given_name": "A"}, headers={**admin.headers, "If-Match": "yes please"}
    )
    assert garbage.status_code == 422
    nulled = await client.patch(
        url, json={"family_name": None}, headers={**admin.headers, "If-Match": '"4"'}
    )
    assert nulled.status_code == 422
    invalid = await client.patch(
        url, json={"email": "nope"}, headers={**admin.headers, "If-Match": '"4"'}
    )
    assert ["body", "email"] in error_locs(invalid)

    final = (await client.get(url, headers=admin.headers)).json()
    assert final["version"] == 4
    assert (final["given_name"], final["family_name"]) == ("Augusta", "Byron")


async def test_update_to_taken_mrn_is_409(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    first = await create(client, admin.headers)
    second = await create(client, admin.headers)
    response = await client.patch(
        f"{BASE}/{second['id']}",
        json={"mrn": first["mrn"]},
        headers={**admin.headers, "If-Match": '"1"'},
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "duplicate_mrn"


async def test_soft_delete_then_404(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    patient = await create(client, admin.headers)
    kept = await create(client, admin.headers)
    url = f"{BASE}/{patient['id']}"

    stale = await client.delete(url, headers={**admin.headers, "If-Match": '"7"'})
    assert stale.status_code == 409
    deleted = await client.delete(url, headers={**admin.headers, "If-Match": '"1"'})
    assert deleted.status_code == 204
    assert deleted.content == b""

    assert (await client.get(url, headers=admin.headers)).status_code == 404
    assert (await client.delete(url, headers=admin.headers)).status_code == 404
    gone = await client.patch(
        url, json={"given_name": "X"}, headers={**admin.headers, "If-Match": '"2"'}
    )
    assert gone.status_code == 404
    assert [p["id"] for p in await walk(client, admin.headers)] == [kept["id"]]
    assert await walk(client, admin.headers, mrn=patient["mrn"]) == []

    # If-Match is optional on DELETE.
    assert (await client.delete(f"{BASE}/{kept['id']}", headers=admin.headers)).status_code == 204


# -- tenancy and roles ---------------------------------------------------------------------


async def test_other_clinics_patients_are_indistinguishable_from_missing(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client)
    bob = await register(client)
    theirs = await create(client, alice.headers, ssn="123-45-6789")
    foreign = f"{BASE}/{theirs['id']}"
    missing = f"{BASE}/{uuid.uuid4()}"
    headers = {**bob.headers, "If-Match": '"1"'}

    for method, body in (("GET", None), ("PATCH", {"given_name": "Mallory"}), ("DELETE", None)):
        a = await client.request(method, foreign, json=body, headers=headers)
        b = await client.request(method, missing, json=body, headers=headers)
        assert a.status_code == b.status_code == 404, method
        assert a.content == b.content, method
        assert "etag" not in a.headers

    assert await walk(client, bob.headers) == []
    assert await walk(client, bob.headers, mrn=theirs["mrn"]) == []
    # Untouched in its own clinic.
    mine = (await client.get(foreign, headers=alice.headers)).json()
    assert mine == theirs


async def test_roles_see_and_write_what_the_masking_policy_allows(
    client: httpx.AsyncClient,
) -> None:
    admin = await register(client)
    _, doctor = await staff(client, admin, "doctor")
    _, nurse = await staff(client, admin, "nurse")
    _, desk = await staff(client, admin, "receptionist")

    charted = await create(client, doctor, ssn="123-45-6789", notes="diabetic")
    assert charted["notes"] == "diabetic"
    url = f"{BASE}/{charted['id']}"

    seen = (await client.get(url, headers=desk)).json()
    assert seen["ssn"] == "***-**-6789"
    assert seen["notes"] is None
    assert seen["given_name"] == charted["given_name"]
    listed = await walk(client, desk)
    assert listed
    assert all(p["ssn"] == "***-**-6789" and p["notes"] is None for p in listed)
    expected = {
        "doctor": (doctor, "123-45-6789", "diabetic"),
        "nurse": (nurse, "***-**-6789", "diabetic"),
        "clinic_admin": (admin.headers, "123-45-6789", None),
    }
    for role, (headers, ssn, notes) in expected.items():
        full = (await client.get(url, headers=headers)).json()
        assert (full["ssn"], full["notes"]) == (ssn, notes), role

    # Registration at the desk: allowed, and the desk sees only what it may of the SSN.
    registered = await client.post(BASE, json=patient_body(ssn="987-65-4321"), headers=desk)
    assert registered.status_code == 201, registered.text
    assert registered.json()["ssn"] == "***-**-4321"
    stored = (await client.get(f"{BASE}/{registered.json()['id']}", headers=doctor)).json()
    assert stored["ssn"] == "987-65-4321"
    for writer in (desk, admin.headers):
        refused = await client.post(BASE, json=patient_body(notes="hmm"), headers=writer)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
        assert "notes" in refused.json()["error"]["message"]

    patch = await client.patch(
        url, json={"notes": "not diabetic"}, headers={**desk, "If-Match": '"1"'}
    )
    assert patch.status_code == 403
    clear = await client.patch(url, json={"notes": None}, headers={**desk, "If-Match": '"1"'})
    assert clear.status_code == 403
    by_admin = await client.patch(
        url, json={"notes": None}, headers={**admin.headers, "If-Match": '"1"'}
    )
    assert by_admin.status_code == 403
    # A masked SSN sent back would overwrite the real one: refused, whoever sends it.
    masked = await client.patch(
        url, json={"ssn": seen["ssn"]}, headers={**nurse, "If-Match": '"1"'}
    )
    assert masked.status_code == 422
    assert masked.json()["error"]["details"][0]["loc"] == ["body", "ssn"]
    phone = await client.patch(
        url, json={"phone": "+442079460958"}, headers={**desk, "If-Match": '"1"'}
    )
    assert phone.status_code == 200, phone.text
    assert phone.json()["notes"] is None
    assert phone.json()["ssn"] == "***-**-6789"
    assert phone.json()["phone"] == "+442079460958"
    # A nurse sees the notes, so may write them.
    noted = await client.patch(
        url, json={"notes": "type 2 diabetic"}, headers={**nurse, "If-Match": '"2"'}
    )
    assert noted.status_code == 200, noted.text

    assert (await client.delete(url, headers=desk)).status_code == 403
    after = (await client.get(url, headers=doctor)).json()
    assert after["notes"] == "type 2 diabetic"
    assert after["ssn"] == "123-45-6789"
    assert after["version"] == 3


async def test_exact_ssn_lookup(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    _, desk = await staff(client, admin, "receptionist")
    ada = await create(client, admin.headers, ssn="123-45-6789")
    await create(client, admin.headers, ssn="111-22-3333")
    other = await register(client)
    await create(client, other.headers, ssn="123-45-6789")
    lookup = f"{BASE}/ssn-lookup"

    found = await client.post(lookup, json={"ssn": "123 45 6789"}, headers=desk)
    assert found.status_code == 200, found.text
    assert [p["id"] for p in found.json()["items"]] == [ada["id"]]
    assert found.json()["items"][0]["ssn"] == "***-**-6789"
    assert found.json()["next_cursor"] is None
    none = await client.post(lookup, json={"ssn": "999-99-9999"}, headers=desk)
    assert none.json()["items"] == []
    for body in (
        {"ssn": "123-45-6789", "name": "Ada"},
        {"ssn": "***-**-6789"},
        {"ssn": "--"},
        {"ssn": ""},
        {"ssn": "1" * 65},
        {"ssn": "123\x00456"},
        {},
    ):
        bad = await client.post(lookup, json=body, headers=desk)
        assert bad.status_code == 422, (body, bad.text)
        assert "123-45-6789" not in bad.text


async def test_an_ssn_in_a_url_is_refused_not_ignored(client: httpx.AsyncClient) -> None:
    """Ignoring ``?ssn=`` would answer an old client with every patient; it is a 422 that
    points at the body-based lookup, and the SSN is not echoed back."""
    admin = await register(client)
    await create(client, admin.headers, ssn="123-45-6789")
    refused = await client.get(BASE, params={"ssn": "123-45-6789"}, headers=admin.headers)
    assert refused.status_code == 422, refused.text
    assert "/api/v1/patients/ssn-lookup" in refused.json()["error"]["message"]
    assert "123-45-6789" not in refused.text


async def test_control_characters_in_search_are_422(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    patient = await create(client, admin.headers, mrn="MRN-X1")
    for params in ({"name": "A\x00"}, {"mrn": "M\x00"}, {"name": "\x1b[2J"}):
        response = await client.get(BASE, params=params, headers=admin.headers)
        assert response.status_code == 422, (params, response.text)
    padded = await walk(client, admin.headers, mrn=" MRN-X1 ")
    assert [p["id"] for p in padded] == [patient["id"]]
