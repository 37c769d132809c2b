"""Keyset pagination: the :class:`Page` result and opaque cursors.

A cursor is urlsafe base64 (unpadded) of canonical JSON holding the sort field, the
direction, the last row's sort key and its id. Pages continue *after* that (key, id) pair,
so there is no OFFSET scan and rows sharing a sort value are never skipped or repeated.

The embedded checksum is not a secret MAC: a cursor's values only ever become bound
parameters and every read stays behind the clinic isolation walls, so a forged cursor can
at worst page through rows the caller may already see. The checksum exists so a truncated,
mangled or hand-edited cursor fails loudly with :class:`InvalidInput` instead of silently
returning a wrong page.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from healthdb.errors import InvalidInput

T = TypeVar("T")

#: Page sizes accepted by every ``list``-like method.
MIN_LIMIT = 1
MAX_LIMIT = 200
DEFAULT_LIMIT = 50

#: Longer tokens are rejected before any decoding work (a 200-char name fits easily).
MAX_CURSOR_LENGTH = 4096

_FORMAT_VERSION = 1
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_KEYS = frozenset({"v", "s", "d", "k", "i", "h"})

#: A value a cursor can carry: the Python types of the sortable (non-null) columns.
SortKey = str | int | bool | dt.datetime | dt.date | uuid.UUID


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of results; pass ``next_cursor`` back to get the next page (``None``: done)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Cursor:
    """The decoded position: continue after the row with (``key``, ``id``)."""

    sort: str
    descending: bool
    key: SortKey
    id: uuid.UUID


def check_limit(limit: object) -> int:
    """Return ``limit`` if it is an int in ``MIN_LIMIT..MAX_LIMIT``; else :class:`InvalidInput`."""
    # bool is an int subclass; ``limit=True`` is a bug, not a page size of one.
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidInput("limit must be an integer")
    if not MIN_LIMIT <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between {MIN_LIMIT} and {MAX_LIMIT}")
    return limit


def encode_cursor(cursor: Cursor) -> str:
    """Serialize ``cursor`` to an opaque urlsafe token."""
    payload = _payload(cursor.sort, cursor.descending, _tag(cursor.key), cursor.id.hex)
    raw = _canonical({**payload, "h": _checksum(payload)})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(
    token: str, *, sort: str, descending: bool, key_type: type[Any] | None = None
) -> Cursor:
    """Parse a token made by :func:`encode_cursor` for the same ``sort`` and direction.

    ``key_type`` (the sort column's Python type) is checked exactly, so a cursor can never
    bind, say, a string where the column expects a timestamp. Any defect raises
    :class:`InvalidInput`; the message never echoes the token.
    """
    cursor = _decode(token)
    if cursor.sort != sort or cursor.descending != descending:
        raise InvalidInput("cursor does not match this sort order")
    if key_type is not None and type(cursor.key) is not key_type:
        raise InvalidInput("invalid cursor")
    return cursor


def _decode(token: object) -> Cursor:
    if (
        not isinstance(token, str)
        or len(token) > MAX_CURSOR_LENGTH
        or _TOKEN_CHARS.fullmatch(token) is None
    ):
        raise InvalidInput("invalid cursor")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        # Non-canonical base64 (stray trailing bits) would let two tokens mean one cursor.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            raise ValueError("non-canonical base64")
        data = json.loads(raw)
        if not isinstance(data, dict) or data.keys() != _KEYS or data["v"] != _FORMAT_VERSION:
            raise ValueError("unexpected shape")
        sort, descending, tagged, ident = data["s"], data["d"], data["k"], data["i"]
        if not isinstance(sort, str) or not isinstance(descending, bool):
            raise ValueError("unexpected shape")
        if not isinstance(ident, str) or len(ident) != 32:
            raise ValueError("bad id")
        payload = _payload(sort, descending, tagged, ident)
        if data["h"] != _checksum(payload) or _canonical({**payload, "h": data["h"]}) != raw:
            raise ValueError("checksum mismatch")
        return Cursor(sort, descending, _untag(tagged), uuid.UUID(hex=ident))
    except (ValueError, TypeError, KeyError, OverflowError):
        # json.JSONDecodeError and binascii.Error are ValueErrors; chain nothing (no token).
        raise InvalidInput("invalid cursor") from None


def _payload(sort: str, descending: bool, tagged: Any, ident: str) -> dict[str, Any]:
    return {"v": _FORMAT_VERSION, "s": sort, "d": descending, "k": tagged, "i": ident}


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _checksum(payload: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(payload)).hexdigest()[:16]


def _tag(value: SortKey) -> list[Any]:
    # Order matters: bool before int and datetime before date (subclass relationships).
    if isinstance(value, bool):
        return ["b", value]
    if isinstance(value, int):
        return ["n", value]
    if isinstance(value, str):
        return ["s", value]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise TypeError("cursor timestamps must be timezone-aware")
        return ["t", value.astimezone(dt.UTC).isoformat()]
    if isinstance(value, dt.date):
        return ["d", value.isoformat()]
    if isinstance(value, uuid.UUID):
        return ["u", value.hex]
    raise TypeError(f"cannot put a {type(value).__name__} in a cursor")


def _untag(tagged: Any) -> SortKey:
    if not isinstance(tagged, list) or len(tagged) != 2 or not isinstance(tagged[0], str):
        raise ValueError("bad key")
    tag, value = tagged
    if tag == "b" and isinstance(value, bool):
        return value
    if tag == "n" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tag == "s" and isinstance(value, str):
        return value
    if tag == "t" and isinstance(value, str):
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("naive timestamp")
        return parsed
    if tag == "d" and isinstance(value, str):
        return dt.date.fromisoformat(value)
    if tag == "u" and isinstance(value, str):
        return uuid.UUID(hex=value)
    raise ValueError("bad key")
