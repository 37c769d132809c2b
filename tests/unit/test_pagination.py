"""Cursor encoding and limit checks (no I/O)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healthdb.errors import InvalidInput
from healthdb.repositories.pagination import (
    MAX_CURSOR_LENGTH,
    MAX_LIMIT,
    Cursor,
    Page,
    check_limit,
    decode_cursor,
    encode_cursor,
)

TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

ZONES = [
    dt.UTC,
    dt.timezone(dt.timedelta(hours=5, minutes=30)),
    dt.timezone(-dt.timedelta(hours=8)),
]

sort_keys = st.one_of(
    st.text(max_size=200),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.booleans(),
    st.dates(),
    st.datetimes(timezones=st.sampled_from(ZONES)),
    st.uuids(),
)


def sample(key: object = "Smith", *, sort: str = "family_name", desc: bool = False) -> Cursor:
    return Cursor(sort=sort, descending=desc, key=key, id=uuid.uuid4())  # type: ignore[arg-type]


def test_round_trip_timestamp() -> None:
    when = dt.datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)
    cursor = sample(when, sort="created_at", desc=True)
    token = encode_cursor(cursor)
    assert decode_cursor(token, sort="created_at", descending=True, key_type=dt.datetime) == cursor


def test_token_is_urlsafe_base64_json() -> None:
    token = encode_cursor(sample("O'Brien"))
    assert set(token) <= set(TOKEN_ALPHABET)
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    assert data["s"] == "family_name"
    assert data["k"] == ["s", "O'Brien"]


@given(key=sort_keys, sort=st.text(max_size=30), desc=st.booleans(), ident=st.uuids())
def test_round_trip_property(key: object, sort: str, desc: bool, ident: uuid.UUID) -> None:
    cursor = Cursor(sort=sort, descending=desc, key=key, id=ident)  # type: ignore[arg-type]
    decoded = decode_cursor(encode_cursor(cursor), sort=sort, descending=desc, key_type=type(key))
    assert decoded == cursor
    assert type(decoded.key) is type(key)


@given(data=st.data())
def test_any_single_character_change_is_rejected(data: st.DataObject) -> None:
    token = encode_cursor(sample(data.draw(sort_keys)))
    position = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = data.draw(st.sampled_from(TOKEN_ALPHABET).filter(lambda c: c != token[position]))
    tampered = token[:position] + replacement + token[position + 1 :]
    with pytest.raises(InvalidInput):
        decode_cursor(tampered, sort="family_name", descending=False)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not a cursor!",
        "====",
        "e30",  # "{}"
        base64.urlsafe_b64encode(b"[1, 2, 3]").decode().rstrip("="),
        base64.urlsafe_b64encode(b"\xff\xfe\x00").decode().rstrip("="),
        "A" * (MAX_CURSOR_LENGTH + 1),
    ],
)
def test_garbage_is_invalid_input(garbage: str) -> None:
    with pytest.raises(InvalidInput, match="invalid cursor"):
        decode_cursor(garbage, sort="family_name", descending=False)


def test_edited_payload_with_stale_checksum_is_rejected() -> None:
    token = encode_cursor(sample("Smith"))
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    data["k"] = ["s", "Zzz"]
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    forged = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    with pytest.raises(InvalidInput, match="invalid cursor"):
        decode_cursor(forged, sort="family_name", descending=False)


def test_truncated_token_is_rejected() -> None:
    token = encode_cursor(sample())
    with pytest.raises(InvalidInput, match="invalid cursor"):
        decode_cursor(token[:-3], sort="family_name", descending=False)


def test_cursor_for_another_sort_or_direction_is_rejected() -> None:
    token = encode_cursor(sample(sort="family_name", desc=False))
    with pytest.raises(InvalidInput):
        decode_cursor(token, sort="mrn", descending=False)
    with pytest.raises(InvalidInput):
        decode_cursor(token, sort="family_name", descending=True)


def test_key_of_wrong_type_is_rejected() -> None:
    token = encode_cursor(sample("2024-01-01", sort="created_at"))
    with pytest.raises(InvalidInput, match="invalid cursor"):
        decode_cursor(token, sort="created_at", descending=False, key_type=dt.datetime)


def test_non_string_token_is_rejected() -> None:
    with pytest.raises(InvalidInput):
        decode_cursor(123, sort="x", descending=False)  # type: ignore[arg-type]


def test_naive_timestamp_cannot_be_encoded() -> None:
    with pytest.raises(TypeError):
        encode_cursor(sample(dt.datetime(2024, 1, 1), sort="created_at"))


@pytest.mark.parametrize("limit", [1, 50, MAX_LIMIT])
def test_limit_in_range(limit: int) -> None:
    assert check_limit(limit) == limit


@pytest.mark.parametrize("limit", [0, -1, MAX_LIMIT + 1, 10**9, True, 1.5, "10", None])
def test_limit_out_of_range(limit: object) -> None:
    with pytest.raises(InvalidInput):
        check_limit(limit)


def test_page_is_frozen() -> None:
    page = Page(items=[1, 2], next_cursor=None)
    with pytest.raises(AttributeError):
        page.next_cursor = "x"  # type: ignore[misc]
