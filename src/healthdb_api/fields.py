"""The field types every request is built from, and the one rule of what text is accepted.

Text must be something every backend can store and every log line can hold, and a name
must display as what it is:

* no unpaired UTF-16 surrogates (``"\\ud800"``): they are not Unicode scalar values, so they
  cannot be encoded as UTF-8 for PostgreSQL, SQLite or a log;
* no control characters (category ``Cc``: NUL, which PostgreSQL cannot store in text,
  escape sequences, ...), except newlines and tabs in multi-line text;
* in single-line text, no line or paragraph separators (U+2028, U+2029) and no invisible
  formatting characters (category ``Cf``: bidirectional overrides and isolates such as
  U+202E and U+2066-2069, zero-width spaces, soft hyphens, tag characters). The zero-width
  joiner and non-joiner (U+200D, U+200C) are part of how names are written in Persian,
  Devanagari and other scripts, so they are accepted *inside a word*: between two letters
  or marks, never at an edge or next to a space, where they would only hide something;
* in multi-line text (clinical notes) other formatting characters are kept, but the
  bidirectional embeddings, overrides and isolates are refused there too: they make text
  display in another order than it is stored.

Instants (:data:`Instant`) must carry a UTC offset and lie, once converted to UTC, inside
years 1-9999: ``9999-12-31T23:00:00-05:00`` is a valid ISO string whose UTC value is in
year 10000, which no backend (nor Python) can represent.

Every message says what the rule is, never what the input was.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, StringConstraints

__all__ = [
    "BIDI_CONTROLS",
    "Encodable",
    "Instant",
    "MultiLine",
    "MultiLineRule",
    "Name",
    "Nfc",
    "SingleLine",
    "Trimmed",
    "bounded",
    "check_text",
    "refusal",
    "to_utc",
]

_WHITESPACE_OK = frozenset("\n\r\t")
_JOINERS = frozenset("\u200c\u200d")
#: Embeddings, overrides, isolates and marks that reorder how text is displayed.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_SEPARATORS = frozenset({"Zl", "Zp"})


def _in_word(value: str, index: int) -> bool:
    """True when the character at ``index`` sits between two letters or marks."""
    if index == 0 or index == len(value) - 1:
        return False
    return all(unicodedata.category(value[i])[0] in "LM" for i in (index - 1, index + 1))


def refusal(value: str, *, multiline: bool = False) -> str | None:
    """Why ``value`` is refused (a rule, never the value), or ``None`` when it is accepted."""
    for index, ch in enumerate(value):
        category = unicodedata.category(ch)
        if category == "Cs":
            return "must be valid Unicode (no unpaired surrogates)"
        if category == "Cc" and not (multiline and ch in _WHITESPACE_OK):
            if multiline:
                return "must not contain control characters other than newlines and tabs"
            return "must not contain control characters"
        if ch in BIDI_CONTROLS:
            return "must not contain bidirectional formatting characters"
        if multiline:
            continue
        if category in _SEPARATORS:
            return "must be a single line"
        if category == "Cf" and not (ch in _JOINERS and _in_word(value, index)):
            return "must not contain invisible formatting characters"
    return None


def check_text(value: str, *, multiline: bool = False) -> str:
    """``value`` unchanged, or :class:`ValueError` naming the rule it breaks."""
    reason = refusal(value, multiline=multiline)
    if reason is not None:
        raise ValueError(reason)
    return value


def _nfc(value: Any) -> Any:
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


def _nfc_trimmed(value: Any) -> Any:
    # Trimmed here, not with ``strip_whitespace``: after a before-validator pydantic checks
    # ``min_length`` before stripping, which would let "   " through as a name.
    return unicodedata.normalize("NFC", value).strip() if isinstance(value, str) else value


def _encodable(value: str) -> str:
    if any(unicodedata.category(ch) == "Cs" for ch in value):
        raise ValueError("must be valid Unicode (no unpaired surrogates)")
    return value


def bounded(max_length: int, *, min_length: int = 0) -> StringConstraints:
    """The length bounds of a text field (its column's width)."""
    return StringConstraints(min_length=min_length, max_length=max_length)


#: Before validation: NFC-normalised (a name typed with combining accents matches the same
#: name typed precomposed), or NFC and trimmed.
Nfc = BeforeValidator(_nfc)
Trimmed = BeforeValidator(_nfc_trimmed)
#: After validation: the rule of :func:`refusal` for single-line and multi-line text.
SingleLine = AfterValidator(check_text)
MultiLineRule = AfterValidator(lambda value: check_text(value, multiline=True))
#: Only what cannot be encoded is refused: for secrets (passwords, tokens), which are
#: never displayed, and which normalising would change.
Encodable = AfterValidator(_encodable)

#: A name (a person's, a clinic's): trimmed single-line text of 1-200 characters.
Name = Annotated[str, Trimmed, bounded(200, min_length=1), SingleLine]
#: Multi-line text (clinical notes): NFC, whitespace and line breaks kept.
MultiLine = Annotated[str, Nfc, MultiLineRule]


def to_utc(value: dt.datetime) -> dt.datetime:
    """An aware ``value`` in UTC; :class:`ValueError` when its UTC value is outside years
    1-9999 (it has no representation there)."""
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("must fall within years 1 to 9,999 once converted to UTC") from None


#: A point in time with a UTC offset, converted to UTC (so every backend can store it).
Instant = Annotated[AwareDatetime, AfterValidator(to_utc)]
