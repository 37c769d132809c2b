"""The Patient ↔ FHIR mapping (no I/O): valid R4 resources out, the documented elements in,
and problems named by element, never by value."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

import pytest
from fhir.resources.R4B.patient import Patient as FhirPatient

from healthdb.phi import MaskedValue
from healthdb.repositories import PatientRecord
from healthdb_api.fhir import synthetic
from healthdb_api.fhir.mapping import SSN_SYSTEM, InvalidResource, parse_patient, to_resource
from healthdb_api.fhir.outcome import operation_outcome
from tests.canary import canary, canary_email, found_in

SYSTEM = "https://clinic.example/mrn"
NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


def record(**overrides: Any) -> PatientRecord:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "mrn": "MRN-1",
        "given_name": "Zoë",
        "family_name": "O'Brien",
        "date_of_birth": dt.date(1980, 2, 29),
        "sex": "female",
        "phone": "+14155550123",
        "email": "zoe@example.org",
        "address": "12 St James's Square, London",
        "ssn": "900-12-3456",
        "notes": "not mapped",
        "version": 3,
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(overrides)
    return PatientRecord(**values)


def fields(resource: dict[str, Any]) -> dict[str, Any]:
    return parse_patient(resource, mrn_system=SYSTEM).model_dump(exclude={"notes"})


def test_resources_are_valid_r4_patients() -> None:
    full = to_resource(record(), mrn_system=SYSTEM)
    bare = to_resource(
        record(phone=None, email=None, address=None, ssn=None, sex="x"), mrn_system=SYSTEM
    )
    for resource in (full, bare):
        FhirPatient.model_validate(resource)
    assert full["meta"] == {"versionId": "3", "lastUpdated": "2026-11-29T12:00:00Z"}
    assert [i["system"] for i in full["identifier"]] == [SYSTEM, SSN_SYSTEM]
    assert "telecom" not in bare
    assert "address" not in bare
    assert bare["gender"] == "unknown"  # a stored value outside the FHIR codes
    assert "notes" not in str(full)


def test_a_masked_value_is_labelled_redacted() -> None:
    masked = to_resource(record(ssn=MaskedValue("***-**-3456")), mrn_system=SYSTEM)
    assert masked["meta"]["security"][0]["code"] == "REDACTED"
    assert masked["identifier"][1]["value"] == "***-**-3456"
    assert "security" not in to_resource(record(), mrn_system=SYSTEM)["meta"]


def test_what_goes_out_comes_back_in() -> None:
    source = record()
    back = fields(to_resource(source, mrn_system=SYSTEM))
    expected = dataclasses.asdict(source)
    assert back == {key: expected[key] for key in back}


def test_synthetic_patients_survive_two_passes() -> None:
    for resource in synthetic.patients(300, mrn_system=SYSTEM):
        once = fields(resource)
        stored = record(**once)
        assert fields(to_resource(stored, mrn_system=SYSTEM)) == once


def test_elements_are_chosen_as_documented() -> None:
    resource = {
        "resourceType": "Patient",
        "identifier": [
            {"system": "urn:other", "value": "X1"},  # an identifier that is not stored
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                    ]
                },
                "system": "urn:elsewhere:mrn",
                "value": "EXT-9",
            },
        ],
        "name": [
            {"use": "nickname", "family": "Nick", "given": ["N"]},
            {"use": "official", "family": "Lovelace", "given": ["Ada", "Augusta"]},
        ],
        "birthDate": "1815-12-10",
        "telecom": [
            {"system": "fax", "value": "+442071234567"},
            {"system": "email", "value": "ada@example.org"},
        ],
        "address": [
            {"use": "old", "text": "Somewhere old"},
            {
                "use": "home",
                "line": ["12 St James's Square"],
                "city": "London",
                "postalCode": "SW1Y 4JH",
                "country": "UK",
            },
        ],
    }
    got = fields(resource)
    assert got["mrn"] == "EXT-9"  # another system's MRN, recognised by its type
    assert (got["family_name"], got["given_name"]) == ("Lovelace", "Ada Augusta")
    assert got["sex"] == "unknown"  # gender not recorded
    assert (got["phone"], got["email"], got["ssn"]) == (None, "ada@example.org", None)
    assert got["address"] == "12 St James's Square, London, SW1Y 4JH, UK"


@pytest.mark.parametrize(
    ("change", "expression"),
    [
        ({"identifier": []}, "Patient.identifier"),
        (
            {"identifier": [{"system": SYSTEM, "value": "A"}, {"system": SYSTEM, "value": "B"}]},
            "Patient.identifier",
        ),
        ({"name": [{"family": "OnlyFamily"}]}, "Patient.name"),
        ({"birthDate": "1980-02"}, "Patient.birthDate"),
        ({"gender": "robot"}, "Patient.gender"),
        ({"telecom": [{"system": "phone", "value": "555"}]}, "Patient.telecom"),
        ({"telecom": [{"system": "email", "value": "not-an-email"}]}, "Patient.telecom"),
        ({"name": [{"family": "x" * 201, "given": ["A"]}]}, "Patient.name.family"),
        ({"active": "maybe"}, "Patient.active"),
        ({"contact": [{"bogus": 1}]}, "Patient.contact[0]"),
    ],
)
def test_problems_name_the_element(change: dict[str, Any], expression: str) -> None:
    resource = {**next(synthetic.patients(1, mrn_system=SYSTEM)), **change}
    with pytest.raises(InvalidResource) as caught:
        parse_patient(resource, mrn_system=SYSTEM)
    assert expression in [issue.expression for issue in caught.value.issues]


def test_problems_never_quote_the_rejected_values() -> None:
    bad = {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": canary("mrn") + "\u0000"}],
        "name": [{"family": canary("family") + "\u0007", "given": [canary("given")]}],
        "gender": canary("gender"),
        "birthDate": canary("dob"),
        "telecom": [
            {"system": "phone", "value": canary("phone")},
            {"system": "email", "value": canary_email().replace("@", "@@")},
        ],
    }
    with pytest.raises(InvalidResource) as caught:
        parse_patient(bad, mrn_system=SYSTEM)
    body = str(operation_outcome(caught.value.issues, 400))
    assert caught.value.issues
    assert not found_in(body), body
