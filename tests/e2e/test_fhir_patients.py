"""The FHIR Patient interactions over HTTP, on SQLite and PostgreSQL: what a FHIR client
sees (resources, Bundles, OperationOutcomes, versions) and what the walls keep from it."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient as FhirPatient

from tests.e2e.conftest import register, staff
from tests.e2e.fhir_support import FHIR_JSON, comparable, mrn_of, patient_body

BASE = "/fhir/Patient"


def outcome(response: httpx.Response, status: int) -> dict[str, Any]:
    """The body of an error response: a valid OperationOutcome with ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/fhir+json"
    body: dict[str, Any] = response.json()
    OperationOutcome.model_validate(body)
    return body


async def create(client: httpx.AsyncClient, headers: dict[str, str], **overrides: Any) -> Any:
    created = await client.post(
        BASE, json=patient_body(**overrides), headers={**headers, **FHIR_JSON}
    )
    assert created.status_code == 201, created.text
    return created


async def test_metadata_is_a_valid_capability_statement(client: httpx.AsyncClient) -> None:
    response = await client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json"
    statement = CapabilityStatement.model_validate(response.json())
    assert statement.fhirVersion == "4.0.1"
    patient = statement.rest[0].resource[0]
    assert patient.versioning == "versioned-update"
    assert {p.name for p in patient.searchParam} == {"family", "given", "birthdate", "identifier"}


async def test_create_read_vread_and_update(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    body = patient_body()
    created = await client.post(BASE, json=body, headers={**admin.headers, **FHIR_JSON})
    assert created.status_code == 201, created.text
    resource = created.json()
    FhirPatient.model_validate(resource)
    pid = resource["id"]
    assert created.headers["ETag"] == 'W/"1"'
    assert created.headers["Location"].endswith(f"/fhir/Patient/{pid}/_history/1")
    # Stored verbatim (D'Ancona, Zoë) and mapped back element by element.
    expected = dict(body)
    expected["identifier"] = resource["identifier"]  # the server adds the identifier types
    assert comparable(resource) == comparable(expected)
    assert [i["value"] for i in resource["identifier"]] == [mrn_of(body), "900-12-3456"]

    read = await client.get(f"{BASE}/{pid}", headers=admin.headers)
    assert read.status_code == 200
    assert read.json() == resource
    vread = await client.get(f"{BASE}/{pid}/_history/1", headers=admin.headers)
    assert vread.json() == resource

    changed = {
        **resource,
        "name": [{"use": "official", "family": "Lindqvist", "given": ["Ifeoma"]}],
    }
    updated = await client.put(
        f"{BASE}/{pid}", json=changed, headers={**admin.headers, **FHIR_JSON, "If-Match": 'W/"1"'}
    )
    assert updated.status_code == 200, updated.text
    assert updated.headers["ETag"] == 'W/"2"'
    assert updated.json()["name"][0]["family"] == "Lindqvist"
    assert updated.json()["meta"]["versionId"] == "2"
    gone = await client.get(f"{BASE}/{pid}/_history/1", headers=admin.headers)
    outcome(gone, 404)


async def test_update_needs_the_current_version(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    resource = (await create(client, admin.headers)).json()
    url = f"{BASE}/{resource['id']}"
    headers = {**admin.headers, **FHIR_JSON}
    missing = await client.put(url, json=resource, headers=headers)
    assert outcome(missing, 428)["issue"][0]["expression"] == ["If-Match"]
    # An update that changes nothing keeps the version; one that does bumps it.
    same = await client.put(url, json=resource, headers={**headers, "If-Match": 'W/"1"'})
    assert same.status_code == 200
    assert same.headers["ETag"] == 'W/"1"'
    resource["gender"] = "other"
    first = await client.put(url, json=resource, headers={**headers, "If-Match": 'W/"1"'})
    assert first.status_code == 200
    assert first.headers["ETag"] == 'W/"2"'
    stale = await client.put(url, json=resource, headers={**headers, "If-Match": 'W/"1"'})
    assert outcome(stale, 412)["issue"][0]["code"] == "conflict"
    other_id = await client.put(
        url, json={**resource, "id": str(uuid.uuid4())}, headers={**headers, "If-Match": 'W/"2"'}
    )
    outcome(other_id, 400)


async def test_search_pages_with_next_links(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    family = f"Fhirsearch{uuid.uuid4().hex[:6]}"
    mrns = set()
    for day in range(1, 6):
        name = [{"family": family, "given": ["Ifeoma" if day % 2 else "Kaito"]}]
        created = await create(client, admin.headers, name=name, birthDate=f"1990-01-0{day}")
        mrns.add(mrn_of(created.json()))
    seen: list[str] = []
    url: str | None = f"{BASE}?family={family[:8].lower()}&_count=2"
    while url is not None:
        page = await client.get(url, headers=admin.headers)
        assert page.status_code == 200, page.text
        bundle = Bundle.model_validate(page.json())
        assert bundle.type == "searchset"
        assert len(bundle.entry or []) <= 2
        seen += [mrn_of(e["resource"]) for e in page.json().get("entry", [])]
        url = next((link.url for link in bundle.link or [] if link.relation == "next"), None)
    assert sorted(seen) == sorted(mrns)
    assert len(seen) == 5

    async def found(**params: str) -> int:
        criteria = params if "family:exact" in params else {"family": family, **params}
        response = await client.get(BASE, params=criteria, headers=admin.headers)
        assert response.status_code == 200, response.text
        return len(response.json().get("entry", []))

    assert await found(given="if") == 3
    assert await found(birthdate="1990-01-02") == 1
    assert await found(birthdate="1990-01") == 5
    assert await found(birthdate="ge1990-01-04") == 2
    assert await found(birthdate="lt1990-01-04") == 3
    assert await found(**{"birthdate": "1991"}) == 0
    one = sorted(mrns)[0]
    assert await found(identifier=one) == 1
    assert await found(identifier=f"urn:healthdb:mrn|{one}") == 1
    assert await found(identifier=f"urn:other:system|{one}") == 0
    assert await found(**{"family:exact": family}) == 5
    assert await found(**{"family:exact": family.lower()}) == 0


async def test_search_refuses_what_it_cannot_do(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    ssn = await client.get(
        BASE,
        params={"identifier": "http://hl7.org/fhir/sid/us-ssn|900-12-3456"},
        headers=admin.headers,
    )
    body = outcome(ssn, 400)
    assert "900-12-3456" not in ssn.text
    assert "ssn-lookup" in body["issue"][0]["diagnostics"]
    for params in (
        {"birthdate": "ne1990"},
        {"family:contains": "x"},
        {"_count": "0"},
        {"_cursor": "junk"},
    ):
        outcome(await client.get(BASE, params=params, headers=admin.headers), 400)
    lenient = await client.get(BASE, params={"_elements": "id"}, headers=admin.headers)
    assert lenient.status_code == 200
    strict = await client.get(
        BASE, params={"_elements": "id"}, headers={**admin.headers, "Prefer": "handling=strict"}
    )
    outcome(strict, 400)


async def test_invalid_resources_answer_operation_outcomes(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    headers = {**admin.headers, **FHIR_JSON}
    cases: list[tuple[Any, str]] = [
        ({"resourceType": "Observation"}, "Patient.resource_type"),
        (patient_body(birthDate="1980"), "Patient.birthDate"),
        (patient_body(gender="robot"), "Patient.gender"),
        (patient_body(identifier=[]), "Patient.identifier"),
        (patient_body(telecom=[{"system": "phone", "value": "12"}]), "Patient.telecom"),
        (patient_body(unknownElement=1), "Patient"),
        (patient_body(birthDate="2999-01-01"), "Patient.birthDate"),
        ([1, 2], "Patient"),
    ]
    for body, expression in cases:
        response = await client.post(BASE, json=body, headers=headers)
        issues = outcome(response, 400)["issue"]
        assert expression in [e for issue in issues for e in issue.get("expression", [])], (
            body,
            issues,
        )
    not_json = await client.post(BASE, content=b"{", headers=headers)
    outcome(not_json, 400)
    xml = await client.post(
        BASE,
        content=b"<Patient/>",
        headers={**admin.headers, "Content-Type": "application/fhir+xml"},
    )
    outcome(xml, 415)
    masked = patient_body()
    masked["identifier"][1]["value"] = "***-**-3456"
    outcome(await client.post(BASE, json=masked, headers=headers), 422)
    body = patient_body()
    assert (await client.post(BASE, json=body, headers=headers)).status_code == 201
    duplicate = await client.post(BASE, json=body, headers=headers)
    assert outcome(duplicate, 409)["issue"][0]["code"] == "duplicate"


async def test_errors_outside_the_handlers_are_operation_outcomes(
    client: httpx.AsyncClient,
) -> None:
    admin = await register(client)
    outcome(await client.get(f"{BASE}/{uuid.uuid4()}"), 401)
    outcome(await client.get(f"{BASE}/not-a-uuid", headers=admin.headers), 404)
    outcome(await client.get("/fhir/Observation", headers=admin.headers), 404)
    wrong_method = await client.delete(f"{BASE}/{uuid.uuid4()}", headers=admin.headers)
    outcome(wrong_method, 405)
    assert wrong_method.headers["Allow"] == "GET, PUT"


async def test_another_clinic_sees_nothing(client: httpx.AsyncClient) -> None:
    mine, theirs = await register(client), await register(client)
    resource = (await create(client, mine.headers)).json()
    url = f"{BASE}/{resource['id']}"
    foreign = await client.get(url, headers=theirs.headers)
    missing = await client.get(f"{BASE}/{uuid.uuid4()}", headers=theirs.headers)
    assert (foreign.status_code, foreign.content) == (missing.status_code, missing.content)
    found = await client.get(BASE, params={"identifier": mrn_of(resource)}, headers=theirs.headers)
    assert found.json().get("entry", []) == []
    overwrite = await client.put(
        url, json=resource, headers={**theirs.headers, **FHIR_JSON, "If-Match": 'W/"1"'}
    )
    outcome(overwrite, 404)
    again = await client.get(url, headers=mine.headers)
    assert again.json() == resource


async def test_masked_ssn_is_labelled_and_kept_on_update(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    _, nurse = await staff(client, admin, "nurse")
    resource = (await create(client, admin.headers)).json()
    url = f"{BASE}/{resource['id']}"
    seen = (await client.get(url, headers=nurse)).json()
    assert [i["value"] for i in seen["identifier"]][1] == "***-**-3456"
    assert seen["meta"]["security"][0]["code"] == "REDACTED"
    assert "security" not in resource["meta"]
    # The nurse edits the address and sends the masked SSN back: the real one is kept.
    edited = {**seen, "address": [{"text": "1 New Street, Leeds"}]}
    headers = {**nurse, **FHIR_JSON, "If-Match": 'W/"1"'}
    saved = await client.put(url, json=edited, headers=headers)
    assert saved.status_code == 200, saved.text
    full = (await client.get(url, headers=admin.headers)).json()
    assert full["identifier"][1]["value"] == "900-12-3456"
    assert full["address"] == [{"use": "home", "text": "1 New Street, Leeds"}]
    # Another masked value would overwrite the SSN with stars: refused.
    edited["identifier"][1]["value"] = "***-**-0000"
    headers["If-Match"] = 'W/"2"'
    outcome(await client.put(url, json=edited, headers=headers), 422)
