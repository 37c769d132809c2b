"""Log redaction: no PHI value, password, token or secret survives into a rendered log line.

Two nets, applied to every event (structlog's own and stdlib records rendered through
:class:`structlog.stdlib.ProcessorFormatter`, tracebacks included):

* **by key** -- a value whose key names a secret (``password``, ``token``, ``secret``,
  ``authorization``, ``cookie``, ``api_key``, ...) or PHI (``ssn``, ``given_name``,
  ``notes``, ... and every attribute declared PHI on a mapped model) is replaced wholesale,
  however deeply it is nested in dicts and lists;
* **by value** -- strings anywhere (the event message and tracebacks included) have
  SSN-shaped numbers, JWTs, bearer credentials, passwords in URLs, query-string values and
  the offending values that PostgreSQL quotes into constraint errors masked.

The model-declared PHI names are supplied by the caller as a callable, resolved on first
use: this module sits below the models in the layering and must not import them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

__all__ = ["PHI_KEYS", "REDACTED", "SECRET_MARKERS", "Redactor", "redact_text"]

REDACTED = "[REDACTED]"

#: A key containing any of these (case-insensitive, ``-`` read as ``_``) holds a secret.
SECRET_MARKERS: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "token",
    "secret",
    "authorization",
    "cookie",
    "api_key",
    "apikey",
    "private_key",
    "credential",
    "ssn",
)

#: Keys that hold PHI wherever they appear, whether or not a model declares them.
PHI_KEYS: frozenset[str] = frozenset(
    {
        "given_name",
        "family_name",
        "full_name",
        "name",
        "date_of_birth",
        "dob",
        "birth_date",
        "phone",
        "email",
        "address",
        "notes",
        "note",
        "reason",
        "mrn",
        "sex",
        "social_security_number",
    }
)

# structlog's own bookkeeping keys are never PHI, and redacting them would break rendering.
_STRUCTURAL = frozenset({"event", "level", "logger", "timestamp", "exception", "stack"})

# Nesting deeper than this is replaced outright: a log line is no place for such a structure
# and a cycle must not hang the logger.
_MAX_DEPTH = 8

_KEEP_ENDS = r"\1" + REDACTED + r"\2"

_VALUE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # JWTs (header.payload.signature, base64url; a JSON header always starts "eyJ").
    (re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"), REDACTED),
    # Authorization header values of any scheme that carries a credential.
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    # scheme://user:password@host -- database and broker URLs.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/?#@\s]*):[^@/?#\s]+@"), r"\1:" + REDACTED + "@"),
    # SSN-shaped numbers: 123-45-6789 or 123456789, not part of a longer number.
    (re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])|(?<![\w-])\d{9}(?![\w-])"), REDACTED),
    # Query-string values (access logs print the full request target).
    (re.compile(r"([?&][A-Za-z0-9_.\[\]-]{1,64}=)[^&\s\"'#]+"), r"\1" + REDACTED),
    # PostgreSQL quotes the offending row into constraint errors:
    #   DETAIL:  Key (clinic_id, mrn)=(..., MRN-1) already exists.
    #   DETAIL:  Failing row contains (...).
    (re.compile(r"(Key \([^)]*\)=\().*?(\) (?:already exists|is not present))"), _KEEP_ENDS),
    (re.compile(r"(Failing row contains \().*(\))"), _KEEP_ENDS),
)


def redact_text(text: str) -> str:
    """``text`` with every value-pattern match masked (keys are not considered)."""
    for pattern, replacement in _VALUE_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _normalise(key: str) -> str:
    return key.strip().lower().replace("-", "_")


class Redactor:
    """A structlog processor that redacts an event dict in place (and returns it).

    ``phi_names`` returns further attribute names to treat as PHI (those declared on the
    mapped models); it is called once, on the first event, so nothing is imported early.
    """

    def __init__(
        self,
        phi_names: Callable[[], Iterable[str]] | None = None,
        *,
        extra_keys: Iterable[str] = (),
    ) -> None:
        self._phi_names = phi_names
        self._keys: frozenset[str] | None = None
        self._extra = frozenset(_normalise(k) for k in extra_keys)

    @property
    def keys(self) -> frozenset[str]:
        """Every exact key name redacted wholesale (secret markers match as substrings)."""
        if self._keys is None:
            declared = self._phi_names() if self._phi_names is not None else ()
            self._keys = PHI_KEYS | self._extra | {_normalise(k) for k in declared}
        return self._keys

    def is_sensitive(self, key: object) -> bool:
        """True when a value stored under ``key`` must not be logged at all."""
        if not isinstance(key, str):
            return False
        name = _normalise(key)
        return name in self.keys or any(marker in name for marker in SECRET_MARKERS)

    def _is_pair_key(self, first: object) -> bool:
        if isinstance(first, (bytes, bytearray)):
            first = bytes(first).decode("latin-1")
        return self.is_sensitive(first)

    def redact(self, value: Any, depth: int = 0) -> Any:
        """``value`` with sensitive keys and value patterns masked, recursively."""
        if isinstance(value, str):
            return redact_text(value)
        if isinstance(value, (bytes, bytearray)):
            return redact_text(bytes(value).decode("utf-8", "replace"))
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if depth >= _MAX_DEPTH:
            return REDACTED
        if isinstance(value, Mapping):
            return {
                k: REDACTED if self.is_sensitive(k) else self.redact(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)) and len(value) == 2 and self._is_pair_key(value[0]):
            # A (name, value) pair, as ASGI and stdlib carry headers: keep only the name.
            return [self.redact(value[0], depth + 1), REDACTED]
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.redact(item, depth + 1) for item in value]
        # Anything else is rendered with repr/str by the renderer: redact that text now.
        return redact_text(str(value))

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            if key.startswith("_"):
                continue  # structlog internals (the stdlib record); never rendered
            value = event_dict[key]
            if key not in _STRUCTURAL and self.is_sensitive(key):
                event_dict[key] = REDACTED
            else:
                event_dict[key] = self.redact(value)
        return event_dict
