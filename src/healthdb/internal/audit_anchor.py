"""Audit anchors: the heads of the audit chains, recorded outside the database.

A hash chain proves that its rows were not edited, inserted or reordered *relative to each
other*; it cannot prove that rows were not cut from its end, nor that someone able to
rewrite the table (the database owner, with the append-only trigger disabled) did not
recompute every hash after a forged row. An :class:`Anchor` closes both gaps for the rows it
covers: it names, for each (clinic, lane), the newest ``seq`` and its ``row_hash`` at the
time it was taken. Kept where the database owner cannot rewrite it (WORM storage, a ticket,
a signed log), it lets :func:`healthdb.internal.audit_verify.verify` check that every
anchored head is still in its chain with the same hash. Rows appended after the newest
anchor remain protected by the chain alone.

This module is the value and its file format only (no I/O), so it can be read and checked
anywhere; taking an anchor and verifying against one live in ``audit_verify``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from healthdb.errors import InvalidInput

__all__ = ["ANCHOR_FORMAT", "Anchor", "Head", "LaneKey"]

#: The format marker of the JSON document; a future incompatible layout gets a new one.
ANCHOR_FORMAT = "healthdb-audit-anchor/1"

#: (clinic id, lane) of one chain.
LaneKey = tuple[uuid.UUID, int]
#: (seq, row_hash) of a chain's newest row.
Head = tuple[int, str]

# row_hash is a sha256 hexdigest, which Python writes in lowercase.
_HASH = re.compile(r"[0-9a-f]{64}")
_TOP_KEYS = frozenset({"format", "taken_at", "heads"})
_HEAD_KEYS = frozenset({"clinic_id", "lane", "seq", "row_hash"})


def _is_int(value: object) -> bool:
    # JSON true/false load as bool, which is an int subclass: refuse them explicitly.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_head(key: LaneKey, head: Head) -> None:
    clinic_id, lane = key
    seq, row_hash = head
    where = f"clinic {clinic_id} lane {lane}"
    if not isinstance(clinic_id, uuid.UUID):
        raise InvalidInput(f"anchor: clinic id {clinic_id!r} is not a UUID")
    if not _is_int(lane) or lane < 0:
        raise InvalidInput(f"anchor: {where}: lane must be an integer >= 0")
    # Chains start at seq 1, so an anchored head is at 1 or later.
    if not _is_int(seq) or seq < 1:
        raise InvalidInput(f"anchor: {where}: seq must be an integer >= 1")
    if not isinstance(row_hash, str) or _HASH.fullmatch(row_hash) is None:
        raise InvalidInput(f"anchor: {where}: row_hash must be 64 lowercase hex characters")


@dataclass(frozen=True, slots=True)
class Anchor:
    """The head of every audit chain at ``taken_at`` (timezone-aware, stored as UTC).

    ``heads`` maps (clinic id, lane) to (seq, row_hash) of that lane's newest row; a lane
    without rows is absent. The mapping is copied and read-only, and every entry is checked
    on construction (:class:`~healthdb.InvalidInput` otherwise).
    """

    taken_at: dt.datetime
    heads: Mapping[LaneKey, Head] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.taken_at, dt.datetime) or self.taken_at.tzinfo is None:
            raise InvalidInput("anchor: taken_at must be a timezone-aware datetime")
        heads = dict(self.heads)
        for key, head in heads.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise InvalidInput("anchor: heads are keyed by (clinic id, lane)")
            if not (isinstance(head, tuple) and len(head) == 2):
                raise InvalidInput("anchor: each head is (seq, row_hash)")
            _check_head(key, head)
        # Frozen dataclass: normalise through object.__setattr__, once, at construction.
        object.__setattr__(self, "taken_at", self.taken_at.astimezone(dt.UTC))
        object.__setattr__(self, "heads", MappingProxyType(heads))

    def to_json(self) -> str:
        """The anchor as a stable, readable JSON document (sorted heads, 2-space indent)."""
        heads = [
            {"clinic_id": str(clinic), "lane": lane, "seq": seq, "row_hash": row_hash}
            for (clinic, lane), (seq, row_hash) in sorted(
                self.heads.items(), key=lambda item: (str(item[0][0]), item[0][1])
            )
        ]
        document = {
            "format": ANCHOR_FORMAT,
            "taken_at": self.taken_at.isoformat(timespec="microseconds"),
            "heads": heads,
        }
        return json.dumps(document, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Anchor:
        """Parse a document written by :meth:`to_json`.

        Raises :class:`~healthdb.InvalidInput` naming the problem: not JSON, another format,
        a missing or unknown key, a wrong type, a naive or unparsable ``taken_at``, a bad
        clinic id, a lane < 0, a seq < 1, a hash that is not 64 lowercase hex characters,
        or the same (clinic, lane) twice.
        """
        try:
            document = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise InvalidInput(f"anchor is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise InvalidInput("anchor: expected a JSON object")
        if document.get("format") != ANCHOR_FORMAT:
            raise InvalidInput(f"anchor: format must be {ANCHOR_FORMAT!r}")
        _exact_keys(document, _TOP_KEYS, "anchor")
        taken_at = _parse_time(document["taken_at"])
        raw_heads = document["heads"]
        if not isinstance(raw_heads, list):
            raise InvalidInput("anchor: heads must be a list")
        heads: dict[LaneKey, Head] = {}
        for index, raw in enumerate(raw_heads):
            key, head = _parse_head(raw, index)
            if key in heads:
                raise InvalidInput(f"anchor: clinic {key[0]} lane {key[1]} appears twice")
            heads[key] = head
        return cls(taken_at=taken_at, heads=heads)


def _exact_keys(document: dict[str, Any], expected: frozenset[str], where: str) -> None:
    # Unknown keys are refused: a typo must not silently drop part of an anchor.
    missing, unknown = expected - document.keys(), document.keys() - expected
    if missing:
        raise InvalidInput(f"{where}: missing {', '.join(sorted(missing))}")
    if unknown:
        raise InvalidInput(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")


def _parse_time(value: object) -> dt.datetime:
    if not isinstance(value, str):
        raise InvalidInput("anchor: taken_at must be an ISO 8601 string")
    try:
        taken_at = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput("anchor: taken_at is not an ISO 8601 timestamp") from None
    if taken_at.tzinfo is None:
        raise InvalidInput("anchor: taken_at needs a UTC offset")
    return taken_at


def _parse_head(raw: object, index: int) -> tuple[LaneKey, Head]:
    where = f"anchor: heads[{index}]"
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} must be an object")
    _exact_keys(raw, _HEAD_KEYS, where)
    clinic = raw["clinic_id"]
    if not isinstance(clinic, str):
        raise InvalidInput(f"{where}: clinic_id must be a UUID string")
    try:
        clinic_id = uuid.UUID(clinic)
    except ValueError:
        raise InvalidInput(f"{where}: clinic_id {clinic!r} is not a UUID") from None
    key: LaneKey = (clinic_id, raw["lane"])
    head: Head = (raw["seq"], raw["row_hash"])
    _check_head(key, head)
    return key, head
