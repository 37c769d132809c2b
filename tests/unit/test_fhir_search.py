"""FHIR search parameters → one view query, and the searchset Bundle (no I/O)."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qsl, urlsplit

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome

from healthdb.repositories import Page
from healthdb_api.fhir.outcome import FhirError, operation_outcome
from healthdb_api.fhir.search import SearchQuery, parse_search, searchset
from tests.unit.test_fhir_mapping import SYSTEM, record


def parse(*params: tuple[str, str], strict: bool = False) -> SearchQuery:
    return parse_search(list(params), page_size=20, mrn_system=SYSTEM, strict=strict)


def refused(*params: tuple[str, str], strict: bool = False) -> FhirError:
    with pytest.raises(FhirError) as caught:
        parse(*params, strict=strict)
    assert caught.value.status == 400
    OperationOutcome.model_validate(operation_outcome(caught.value.issues, 400))
    return caught.value


D = dt.date


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("1980", D(1980, 1, 1), D(1981, 1, 1)),
        ("1980-02", D(1980, 2, 1), D(1980, 3, 1)),
        ("eq1980-02-29", D(1980, 2, 29), D(1980, 3, 1)),
        ("ge1980-02", D(1980, 2, 1), None),
        ("gt1980-02", D(1980, 3, 1), None),
        ("sa1980", D(1981, 1, 1), None),
        ("le1980", None, D(1981, 1, 1)),
        ("lt1980-12-31", None, D(1980, 12, 31)),
        ("eb1980-12", None, D(1980, 12, 1)),
    ],
)
def test_birthdate_becomes_a_half_open_range(value: str, low: D | None, high: D | None) -> None:
    query = parse(("birthdate", value))
    assert (query.born_from, query.born_before) == (low, high)


def test_repeated_birthdates_intersect() -> None:
    query = parse(("birthdate", "ge1980"), ("birthdate", "lt1990"))
    assert (query.born_from, query.born_before) == (D(1980, 1, 1), D(1990, 1, 1))
    assert parse(("birthdate", "ge1990"), ("birthdate", "lt1980")).matches_nothing


@pytest.mark.parametrize("value", ["ne1980", "ap1980", "1980-13", "1980-02-30", "80", "1980-1"])
def test_birthdates_it_cannot_search_are_refused(value: str) -> None:
    refused(("birthdate", value))


def test_identifier_tokens() -> None:
    assert parse(("identifier", "M-1")).mrn == "M-1"
    assert parse(("identifier", f"{SYSTEM}|M-1")).mrn == "M-1"
    assert parse(("identifier", "|M-1")).mrn == "M-1"
    assert parse(("identifier", r"M\|1")).mrn == "M|1"  # an escaped bar is part of the value
    assert parse(("identifier", "urn:other|M-1")).matches_nothing
    assert parse(("identifier", "A"), ("identifier", "B")).matches_nothing
    refused(("identifier", "A,B"))
    ssn = refused(("identifier", "http://hl7.org/fhir/sid/us-ssn|900-12-3456"))
    assert "900-12-3456" not in str(ssn.issues)


def test_names_modifiers_and_paging() -> None:
    query = parse(("family:exact", "Zoë "), ("given", "A"), ("_count", "7"), ("_cursor", "abc"))
    assert (query.family, query.family_exact, query.given) == ("Zoë", True, "A")
    assert (query.count, query.cursor) == (7, "abc")
    assert query.applied == [("family:exact", "Zoë "), ("given", "A")]
    for bad in (("family:contains", "x"), ("family", ""), ("given", "a\u0000"), ("_count", "201")):
        refused(bad)
    refused(("family", "A"), ("family", "B"))


def test_unknown_parameters_are_ignored_unless_strict() -> None:
    assert parse(("_elements", "id"), ("_format", "json")).applied == []
    refused(("_elements", "id"), strict=True)
    assert parse(("_format", "json"), strict=True).applied == []
    error = refused(("name<script>", "x"), strict=True)
    assert "<script>" not in str(error.issues)


def test_searchset_links_and_entries() -> None:
    query = parse(("family", "O'Brien"), ("_count", "2"))
    first = record()
    page = Page(items=[first], next_cursor="NEXT")
    bundle = searchset(page, query, base="https://h/fhir", mrn_system=SYSTEM)
    Bundle.model_validate(bundle)
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert dict(parse_qsl(urlsplit(links["self"]).query)) == {"family": "O'Brien", "_count": "2"}
    following = dict(parse_qsl(urlsplit(links["next"]).query))
    assert following == {"family": "O'Brien", "_count": "2", "_cursor": "NEXT"}
    entry = bundle["entry"][0]
    assert entry["fullUrl"] == f"https://h/fhir/Patient/{first.id}"
    assert entry["search"] == {"mode": "match"}
    last = searchset(
        Page(items=[], next_cursor=None), query, base="https://h/fhir", mrn_system=SYSTEM
    )
    assert [link["relation"] for link in last["link"]] == ["self"]
