"""Injection-looking input: noticed and logged as a security event, never refused or altered.

Every value reaches the database as a bound parameter, so ``Robert'); DROP TABLE
patients;--`` is stored verbatim and is harmless -- and may be somebody's real data. What
such input *is* worth is a signal: :class:`SuspiciousInputMonitor` scans JSON request bodies
and query strings against a few classic payload shapes (:data:`RULES`) and, on a match,
logs a ``suspicious_input`` security event naming the request path, the field locations,
the matched rules and the request id. The value itself is never logged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from healthdb_api.errors import safe_key
from healthdb_api.limits import is_json, replay_body

__all__ = ["RULES", "Finding", "SuspiciousInputMonitor", "detect", "scan"]

log = structlog.get_logger("healthdb_api.security")

#: Rule name -> pattern. Names, not patterns or values, are what the security log records.
RULES: dict[str, re.Pattern[str]] = {
    # A quote, bracket or ";" closed early, then a comment to cut off the rest: '-- or ;--
    "comment_tail": re.compile(r"['\"`);]\s*(--|/\*)"),
    "stacked_statement": re.compile(
        r";\s*(drop|truncate|alter|delete|insert|update|create|grant|exec)\b", re.IGNORECASE
    ),
    "union_select": re.compile(r"\bunion\b(\s+all)?\s+select\b", re.IGNORECASE),
    "tautology": re.compile(
        r"\bor\s+(['\"]?)(\w+)\1\s*=\s*['\"]?\2\b",
        re.IGNORECASE,  # or 1=1, or 'a'='a'
    ),
    "script_tag": re.compile(r"<\s*/?\s*script\b", re.IGNORECASE),
    "sql_sleep": re.compile(r"\b(pg_sleep|sleep|benchmark|waitfor\s+delay)\s*\(", re.IGNORECASE),
}

#: Methods whose JSON bodies are scanned (others carry no body worth scanning).
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: Query strings with more fields are not scanned (parsing them is bounded work).
MAX_QUERY_FIELDS = 1000


@dataclass(frozen=True, slots=True)
class Finding:
    """One suspicious value: where it was (``body.family_name``) and which rules matched."""

    location: str
    rules: tuple[str, ...]


def detect(text: str) -> tuple[str, ...]:
    """Names of the rules ``text`` matches (empty when it looks innocent)."""
    return tuple(name for name, pattern in RULES.items() if pattern.search(text))


def scan(value: Any, location: str = "body") -> Iterator[Finding]:
    """Walk a decoded JSON value and yield a :class:`Finding` per suspicious string."""
    if isinstance(value, str):
        rules = detect(value)
        if rules:
            yield Finding(location, rules)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from scan(key, f"{location}.{safe_key(key)}<key>")
            yield from scan(item, f"{location}.{safe_key(key)}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from scan(item, f"{location}[{index}]")


def scan_query(query_string: bytes) -> Iterator[Finding]:
    """Findings in a raw query string (``query.name``)."""
    text = query_string.decode("latin-1")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        return  # absurdly many fields: not worth a scan (the routes take a few)
    for key, item in pairs:
        yield from scan(item, f"query.{safe_key(key)}")


class SuspiciousInputMonitor:
    """ASGI middleware: log a security event for injection-looking input, pass it on as is.

    Placed inside :class:`~healthdb_api.limits.BodyLimit`, so the body it buffers and parses
    is already bounded in size and nesting depth.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"")
        findings = list(scan_query(query)) if query else []
        if scope.get("method") in BODY_METHODS and is_json(scope):
            body, disconnected = await _read_body(receive)
            if disconnected:
                return  # the client went away; nothing to answer
            findings.extend(_scan_body(body))
            receive = replay_body(body, receive)
        if findings:
            _report(scope, findings)
        await self.app(scope, receive, send)


def _scan_body(body: bytes) -> list[Finding]:
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        # Not JSON after all (request validation answers it), or nested beyond what the
        # body limit lets through when this monitor runs without it: nothing to scan.
        return []
    return list(scan(decoded))


def _report(scope: Scope, findings: list[Finding]) -> None:
    state = scope.get("state") or {}
    log.warning(
        "suspicious_input",
        security_event=True,
        method=scope.get("method"),
        path=scope.get("path"),
        locations=[f.location for f in findings],
        rules=sorted({rule for f in findings for rule in f.rules}),
        request_id=state.get("request_id"),
    )


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False
