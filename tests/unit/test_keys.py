"""Cache keys embed the clinic; tags name a (table, clinic) pair."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healthdb.query import keys
from healthdb.query.keys import CacheKey

A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
B = uuid.UUID("00000000-0000-4000-8000-00000000000b")
ROW = uuid.UUID("00000000-0000-4000-8000-0000000000ff")


def all_keys(
    clinic: uuid.UUID, row: uuid.UUID, name: str, parts: tuple[object, ...]
) -> list[CacheKey]:
    return [
        keys.for_clinic(clinic),
        keys.for_user(clinic, row),
        keys.for_patient(clinic, row),
        keys.for_appointment(clinic, row),
        keys.custom(clinic, name, *parts, tables=["patients"]),
    ]


def test_keys_embed_the_clinic() -> None:
    for key in all_keys(A, ROW, "search", ("x",)):
        assert str(A) in key.key


def test_same_query_in_different_clinics_gives_different_keys() -> None:
    a = all_keys(A, ROW, "search", ("Smith", 10))
    b = all_keys(B, ROW, "search", ("Smith", 10))
    assert {k.key for k in a}.isdisjoint({k.key for k in b})


def test_keys_are_deterministic_and_distinguish_parts() -> None:
    one = keys.custom(A, "search", "Smith", 10, tables=["patients"])
    assert one == keys.custom(A, "search", "Smith", 10, tables=["patients"])
    assert one.key != keys.custom(A, "search", "Smith", 11, tables=["patients"]).key
    assert one.key != keys.custom(A, "list", "Smith", 10, tables=["patients"]).key
    assert one.key != keys.custom(A, "search", "10", "Smith", tables=["patients"]).key


def test_tags_name_table_and_clinic() -> None:
    assert keys.table_tag("patients", A) == f"patients:{A}"
    assert keys.table_tag("clinics", None) == "clinics:*"
    assert keys.for_patient(A, ROW).tags == {f"patients:{A}"}
    assert keys.for_user(A, ROW).tags == {f"users:{A}"}
    assert keys.for_appointment(A, ROW).tags == {f"appointments:{A}"}
    assert keys.for_clinic(A).tags == {"clinics:*"}
    custom = keys.custom(A, "visits", tables=["patients", "appointments"])
    assert custom.tags == {f"patients:{A}", f"appointments:{A}"}
    # Another clinic's write tag never matches.
    assert keys.table_tag("patients", B) not in keys.for_patient(A, ROW).tags


def test_custom_key_must_name_a_table() -> None:
    with pytest.raises(ValueError, match="at least one table"):
        keys.custom(A, "x", tables=[])


parts_strategy = st.tuples(st.one_of(st.integers(), st.text(max_size=20), st.none()))


@given(
    st.uuids(),
    st.uuids(),
    st.uuids(),
    st.from_regex(r"[a-z_.]{1,20}", fullmatch=True),
    parts_strategy,
)
def test_keys_never_collide_across_clinics(
    a: uuid.UUID, b: uuid.UUID, row: uuid.UUID, name: str, parts: tuple[object, ...]
) -> None:
    if a == b:
        return
    key_a = {k.key for k in all_keys(a, row, name, parts)}
    key_b = {k.key for k in all_keys(b, row, name, parts)}
    assert key_a.isdisjoint(key_b)
    tags_a = set().union(*(k.tags for k in all_keys(a, row, name, parts)))
    tags_b = set().union(*(k.tags for k in all_keys(b, row, name, parts)))
    # Only the global clinics tag is shared.
    assert tags_a & tags_b == {"clinics:*"}


@given(st.uuids(), st.uuids(), st.uuids())
def test_row_keys_never_collide_across_rows(
    clinic: uuid.UUID, r1: uuid.UUID, r2: uuid.UUID
) -> None:
    if r1 == r2:
        return
    assert keys.for_patient(clinic, r1).key != keys.for_patient(clinic, r2).key
    assert keys.for_patient(clinic, r1).key != keys.for_user(clinic, r1).key
