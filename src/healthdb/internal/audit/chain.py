"""The chain's arithmetic: which fields are sealed, how a row is hashed, lock keys.

``row_hash`` is the sha256 of the canonical JSON of every sealed field (``seq`` and
``prev_hash`` included, ``lane`` and ``row_hash`` itself excluded): sorted keys, no
whitespace, uuids as strings, timestamps as UTC ISO 8601 with microseconds. Editing,
deleting, inserting or reordering rows therefore breaks a chain.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import uuid
from typing import Any

import orjson

__all__ = ["GENESIS_HASH", "SEALED", "clinic_lock_key", "lane_keys", "row_hash"]

GENESIS_HASH = "0" * 64
_LOCK_NAMESPACE = b"healthdb.audit.chain:"

#: Every column that is sealed, in a fixed order (``row_hash`` is the seal itself).
SEALED = (
    "id",
    "clinic_id",
    "seq",
    "occurred_at",
    "actor_id",
    "actor_role",
    "action",
    "resource_type",
    "resource_id",
    "phi_fields",
    "purpose",
    "outcome",
    "request_id",
    "client_addr",
    "reason",
    "prev_hash",
)


def clinic_lock_key(clinic_id: uuid.UUID, lane: int = 0) -> int:
    """The signed 64-bit ``pg_advisory_xact_lock`` key of one lane of a clinic's chain
    (namespaced, so it cannot collide with other advisory locks keyed on the same uuid)."""
    suffix = b"" if lane == 0 else b":" + str(lane).encode()
    digest = hashlib.sha256(_LOCK_NAMESPACE + clinic_id.bytes + suffix).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@functools.lru_cache(maxsize=4096)
def lane_keys(clinic_id: uuid.UUID, lanes: int) -> tuple[int, ...]:
    """The lock keys of a clinic's lanes 0..lanes-1 (cached: a sha256 each)."""
    return tuple(clinic_lock_key(clinic_id, lane) for lane in range(lanes))


#: The sealed fields in the order the canonical JSON lists them (sorted by name).
_ORDER = tuple(sorted(SEALED))


def _canonical(value: Any) -> Any:
    """The JSON form of a sealed value: uuids as strings, timestamps as UTC ISO 8601 with
    microseconds, sequences as lists (the reference the fast path must match)."""
    if value is None or type(value) is str or type(value) is int:
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime in an audit event: pass a timezone-aware value")
        return value.astimezone(dt.UTC).isoformat(timespec="microseconds")
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value


def row_hash(fields: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of the sealed fields."""
    # Built in sorted key order and encoded by orjson: byte for byte what
    # ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` gives
    # (a property test holds the two together), several times faster. orjson writes
    # strings, ints, lists and uuids itself (a uuid as str() gives it), and a UTC timestamp
    # with a non-zero microsecond exactly as isoformat(timespec="microseconds") does; any
    # other timestamp (it would drop ".000000" or keep a foreign offset) and any type it does
    # not know go through _canonical.
    document = {name: fields.get(name) for name in _ORDER}
    for name, value in document.items():
        if type(value) is dt.datetime and not (value.tzinfo is dt.UTC and value.microsecond):
            document[name] = _canonical(value)
    return hashlib.sha256(orjson.dumps(document, default=_canonical)).hexdigest()
