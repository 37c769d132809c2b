"""A patient record serialises to exactly the JSON of ``PatientOut`` (the response model the
OpenAPI document publishes), masked values and nulls included."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid

from hypothesis import given
from hypothesis import strategies as st

from healthdb.phi.masking import MaskedValue
from healthdb.repositories import Page, PatientRecord
from healthdb_api.routes.patient_rules import page_json, patient_json
from healthdb_api.schemas import PatientOut, PatientPage

text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30)
optional = st.none() | text
stamps = st.datetimes(
    min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)
)
records = st.builds(
    PatientRecord,
    id=st.uuids(),
    mrn=text,
    given_name=text,
    family_name=text,
    date_of_birth=st.dates(),
    sex=st.sampled_from(["female", "male", "other", "unknown"]),
    phone=optional,
    email=optional,
    address=optional,
    ssn=st.none() | text | text.map(MaskedValue),
    notes=optional,
    version=st.integers(1, 10**9),
    created_at=stamps,
    updated_at=stamps,
)


def test_the_record_has_the_response_models_fields_in_order() -> None:
    assert [f.name for f in dataclasses.fields(PatientRecord)] == list(PatientOut.model_fields)


@given(records)
def test_a_record_serialises_like_the_response_model(record: PatientRecord) -> None:
    response = patient_json(record)
    assert response.body == PatientOut.model_validate(record).model_dump_json().encode()
    assert response.headers["etag"] == f'"{record.version}"'


@given(st.lists(records, max_size=3), st.none() | st.text(max_size=20))
def test_a_page_serialises_like_the_response_model(
    items: list[PatientRecord], cursor: str | None
) -> None:
    body = page_json(Page(items=items, next_cursor=cursor)).body
    expected = PatientPage(
        items=[PatientOut.model_validate(r) for r in items], next_cursor=cursor
    ).model_dump_json()
    assert json.loads(body) == json.loads(expected)
    assert body == expected.encode()


def test_an_example_reads_as_expected() -> None:
    record = PatientRecord(
        id=uuid.UUID(int=1),
        mrn="M1",
        given_name="Ada",
        family_name="O'Brien",
        date_of_birth=dt.date(1990, 5, 17),
        sex="female",
        phone=None,
        email=None,
        address=None,
        ssn=MaskedValue("***-**-6789"),
        notes=None,
        version=3,
        created_at=dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        updated_at=dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
    )
    body = json.loads(patient_json(record).body)
    assert body["ssn"] == "***-**-6789"
    assert body["created_at"] == "2026-01-02T03:04:05.000006Z"
    assert body["family_name"] == "O'Brien"
