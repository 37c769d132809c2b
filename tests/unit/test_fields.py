"""The one text rule and the instant range of :mod:`healthdb_api.fields`, and the JSON depth
measure of :mod:`healthdb_api.limits`."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from healthdb_api import fields
from healthdb_api.fields import refusal, to_utc
from healthdb_api.limits import json_depth

NAME = TypeAdapter(fields.Name)
NOTES = TypeAdapter(fields.MultiLine)


@pytest.mark.parametrize(
    "value",
    [
        "O'Brien",
        "José",
        "Zoë Saldaña",
        "علی‌رضا",  # Alireza: a zero-width non-joiner inside a Persian name
        "क्‍ष",  # a zero-width joiner inside a Devanagari conjunct
        "Anne-Marie",
        "李小龍",
    ],
)
def test_real_names_are_accepted(value: str) -> None:
    assert NAME.validate_python(value) == value


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("Ana\ud800", "surrogates"),
        ("Ana\x00", "control"),
        ("Ana\x1b[31m", "control"),
        ("Ana\nMaria", "control"),
        ("Ana\u2028Maria", "single line"),
        ("Ana\u202eairaM", "bidirectional"),  # a right-to-left override
        ("Ana\u2066x\u2069", "bidirectional"),  # isolates
        ("Ana\u200bMaria", "invisible"),  # zero-width space
        ("Ana\u00adMaria", "invisible"),  # soft hyphen
        ("\u200dAna", "invisible"),  # a joiner at an edge joins nothing
        ("Ana\u200d", "invisible"),
        ("Ana \u200cMaria", "invisible"),  # next to a space, not inside a word
        ("Ana\U000e0041", "invisible"),  # a tag character
    ],
)
def test_names_refuse_what_cannot_be_stored_or_displays_as_something_else(
    value: str, rule: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        NAME.validate_python(value)
    message = raised.value.errors()[0]["msg"]
    assert rule in message
    assert value.strip() not in message  # the rule, never the value


@pytest.mark.parametrize(
    "codepoint", [0x202A, 0x202B, 0x202C, 0x202D, 0x202E, *range(0x2066, 0x206A)]
)
def test_every_bidi_override_and_isolate_is_refused_even_in_notes(codepoint: int) -> None:
    value = f"take 2 tablets{chr(codepoint)} daily"
    assert refusal(value) is not None
    assert refusal(value, multiline=True) is not None


def test_notes_keep_line_breaks_tabs_and_emoji_joiners() -> None:
    note = "Line one\r\n\tindented\n👩\u200d⚕️ seen by the nurse"
    assert NOTES.validate_python(note) == note
    assert refusal("a\x00b", multiline=True) is not None
    assert refusal("a\ud800b", multiline=True) is not None


@given(st.text())
def test_whatever_the_rule_accepts_every_backend_and_log_can_encode(value: str) -> None:
    if refusal(value) is None:
        value.encode("utf-8")  # never raises for accepted text
        assert "\x00" not in value


@pytest.mark.parametrize(
    "stamp",
    ["9999-12-31T23:00:00-05:00", "0001-01-01T01:00:00+05:00", "9999-12-31T23:59:59-00:01"],
)
def test_instants_outside_the_utc_range_are_refused(stamp: str) -> None:
    adapter = TypeAdapter(fields.Instant)
    with pytest.raises(ValidationError) as raised:
        adapter.validate_python(stamp)
    assert "years 1 to 9,999" in raised.value.errors()[0]["msg"]


def test_instants_come_out_in_utc() -> None:
    value = TypeAdapter(fields.Instant).validate_python("2030-01-01T09:00:00+09:00")
    assert value == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert value.utcoffset() == dt.timedelta(0)
    with pytest.raises(ValueError, match="years"):
        to_utc(dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-1))))


# -- JSON depth, measured without parsing -------------------------------------------------


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=30,
)


@settings(max_examples=300)
@given(JSON)
def test_json_depth_is_the_nesting_depth(value: Any) -> None:
    assert json_depth(json.dumps(value).encode()) == _depth(value)


def test_json_depth_of_hostile_bodies_is_bounded_work() -> None:
    assert json_depth(b"[" * 100_000 + b"]" * 100_000) == 100_000
    assert json_depth(b'"\\' * 100_000) == 0  # an unterminated string, escapes and quotes
    assert json_depth(b'["' + b"[" * 100_000 + b'"]') == 1  # brackets inside a string
