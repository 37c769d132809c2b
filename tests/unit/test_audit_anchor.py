"""The audit anchor value and its JSON file format (no I/O)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest

from healthdb.audit_log import Anchor
from healthdb.errors import InvalidInput
from healthdb.internal.audit_anchor import ANCHOR_FORMAT

A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
B = uuid.UUID("00000000-0000-4000-8000-00000000000b")
HASH = "ab" * 32
TAKEN = dt.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)


def _anchor() -> Anchor:
    return Anchor(
        taken_at=TAKEN, heads={(B, 0): (7, HASH), (A, 2): (3, "0" * 64), (A, 0): (1, HASH)}
    )


def _document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(_anchor().to_json())
    document.update(changes)
    return document


def _head(**changes: Any) -> dict[str, Any]:
    return {"clinic_id": str(A), "lane": 0, "seq": 1, "row_hash": HASH, **changes}


def test_round_trip() -> None:
    anchor = _anchor()
    text = anchor.to_json()
    assert Anchor.from_json(text) == anchor
    assert Anchor.from_json(text).to_json() == text  # stable: same bytes on re-serialising


def test_the_format_is_readable_and_sorted() -> None:
    document = json.loads(_anchor().to_json())
    assert document["format"] == ANCHOR_FORMAT == "healthdb-audit-anchor/1"
    assert document["taken_at"] == "2024-05-01T12:30:15.123456+00:00"
    assert document["heads"] == [
        {"clinic_id": str(A), "lane": 0, "seq": 1, "row_hash": HASH},
        {"clinic_id": str(A), "lane": 2, "seq": 3, "row_hash": "0" * 64},
        {"clinic_id": str(B), "lane": 0, "seq": 7, "row_hash": HASH},
    ]
    assert "\n  " in _anchor().to_json()  # indented, one key a line


def test_an_empty_anchor_round_trips() -> None:
    anchor = Anchor(taken_at=TAKEN)
    assert Anchor.from_json(anchor.to_json()) == anchor
    assert dict(anchor.heads) == {}


def test_taken_at_is_stored_as_utc_and_heads_are_read_only() -> None:
    paris = dt.timezone(dt.timedelta(hours=2))
    anchor = Anchor(taken_at=TAKEN.astimezone(paris), heads={(A, 0): (1, HASH)})
    assert anchor.taken_at.utcoffset() == dt.timedelta(0)
    assert anchor.taken_at == TAKEN
    with pytest.raises(TypeError):
        anchor.heads[(B, 0)] = (1, HASH)  # type: ignore[index]
    assert Anchor.from_json(json.dumps(_document(taken_at="2024-05-01T14:30:15.123456+02:00")))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("{not json", "not valid JSON", id="bad-json"),
        pytest.param("", "not valid JSON", id="empty"),
        pytest.param("[]", "JSON object", id="list"),
        pytest.param(json.dumps(_document(format="other/1")), "format", id="wrong-format"),
        pytest.param(json.dumps({"taken_at": "x", "heads": []}), "format", id="no-format"),
        pytest.param(
            json.dumps({"format": ANCHOR_FORMAT, "heads": []}), "missing taken_at", id="no-time"
        ),
        pytest.param(json.dumps(_document(extra=1)), "unknown key", id="unknown-key"),
        pytest.param(json.dumps(_document(taken_at=12)), "ISO 8601", id="time-number"),
        pytest.param(json.dumps(_document(taken_at="yesterday")), "ISO 8601", id="time-text"),
        pytest.param(
            json.dumps(_document(taken_at="2024-05-01T12:30:15")), "UTC offset", id="naive-time"
        ),
        pytest.param(json.dumps(_document(heads={})), "heads must be a list", id="heads-object"),
        pytest.param(json.dumps(_document(heads=["x"])), "must be an object", id="head-string"),
        pytest.param(
            json.dumps(_document(heads=[{"clinic_id": str(A), "lane": 0, "seq": 1}])),
            "missing row_hash",
            id="head-missing-key",
        ),
        pytest.param(
            json.dumps(_document(heads=[_head(note="x")])), "unknown key", id="head-unknown-key"
        ),
        pytest.param(
            json.dumps(_document(heads=[_head(clinic_id="nope")])), "not a UUID", id="bad-uuid"
        ),
        pytest.param(
            json.dumps(_document(heads=[_head(clinic_id=5)])), "UUID string", id="uuid-number"
        ),
        pytest.param(json.dumps(_document(heads=[_head(lane=-1)])), "lane", id="negative-lane"),
        pytest.param(json.dumps(_document(heads=[_head(lane=True)])), "lane", id="bool-lane"),
        pytest.param(json.dumps(_document(heads=[_head(seq=-3)])), "seq", id="negative-seq"),
        pytest.param(json.dumps(_document(heads=[_head(seq=0)])), "seq", id="zero-seq"),
        pytest.param(json.dumps(_document(heads=[_head(seq="4")])), "seq", id="string-seq"),
        pytest.param(json.dumps(_document(heads=[_head(seq=4.0)])), "seq", id="float-seq"),
        pytest.param(
            json.dumps(_document(heads=[_head(row_hash="ab" * 31)])), "64", id="short-hash"
        ),
        pytest.param(
            json.dumps(_document(heads=[_head(row_hash="AB" * 32)])), "lowercase", id="upper-hash"
        ),
        pytest.param(
            json.dumps(_document(heads=[_head(row_hash="zz" * 32)])), "hex", id="non-hex-hash"
        ),
        pytest.param(json.dumps(_document(heads=[_head(row_hash=None)])), "hex", id="null-hash"),
        pytest.param(
            json.dumps(_document(heads=[_head(), _head(seq=2)])), "twice", id="duplicate-lane"
        ),
    ],
)
def test_malformed_anchors_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Anchor.from_json(text)


@pytest.mark.parametrize(
    ("taken_at", "heads"),
    [
        pytest.param(dt.datetime(2024, 5, 1), {}, id="naive-time"),
        pytest.param(TAKEN, {(A, 0): (0, HASH)}, id="zero-seq"),
        pytest.param(TAKEN, {("a", 0): (1, HASH)}, id="string-clinic"),
        pytest.param(TAKEN, {(A, 0): (1, "x")}, id="bad-hash"),
        pytest.param(TAKEN, {(A,): (1, HASH)}, id="short-key"),
    ],
)
def test_the_constructor_checks_too(taken_at: dt.datetime, heads: Any) -> None:
    with pytest.raises(InvalidInput):
        Anchor(taken_at=taken_at, heads=heads)
