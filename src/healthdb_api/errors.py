"""One error body everywhere: ``{"error": {"code", "message", "details"}}``.

Library errors map to HTTP statuses in one table; anything unexpected becomes an opaque
500 whose body names no exception, SQL or value.
"""

from __future__ import annotations

import math
import re
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from healthdb import (
    AuditWriteFailed,
    ClinicContextRequired,
    ConflictError,
    DatabaseUnavailable,
    HealthdbError,
    IntegrityViolation,
    InvalidInput,
    NotFound,
    RateLimited,
    ServiceClosed,
    UnsafeStatement,
)
from healthdb.phi.redaction import redact_text

log = structlog.get_logger("healthdb_api")

# An input word this long found in a validation message means the message quotes the input
# (shorter ones, "a" or "at", occur in rule descriptions by coincidence).
_ECHO_MIN = 4
_WORD = re.compile(r"\w+")
# A client-chosen key is input too (it could hold anything, PHI or text no encoder takes):
# it is named only when it looks like a field name.
_SAFE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

STATUS: list[tuple[type[HealthdbError], int]] = [
    (InvalidInput, 422),
    # 422 like InvalidInput: the request was well-formed but the statement it carries is
    # refused on its content; the stable code "unsafe_statement" tells the two apart.
    (UnsafeStatement, 422),
    (NotFound, 404),
    (ConflictError, 409),
    (IntegrityViolation, 409),
    (ClinicContextRequired, 403),
    (RateLimited, 429),
    (ServiceClosed, 503),
    (DatabaseUnavailable, 503),
    # The access happened in a transaction that was rolled back: nothing was disclosed or
    # written, and the client may retry once the audit trail accepts rows again.
    (AuditWriteFailed, 503),
]


class ApiError(Exception):
    """An error raised by route code with its HTTP status and stable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def _status_for(exc: HealthdbError) -> int:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _library_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HealthdbError)
    status = _status_for(exc)
    headers = None
    if isinstance(exc, DatabaseUnavailable):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    elif isinstance(exc, RateLimited):  # rounded up: a client that waits is admitted
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if status == 500:
        log.error("library_error", code=exc.code)
        return error_response(500, "internal_error", "internal error")
    return error_response(status, exc.code, str(exc), headers=headers)


def _strings(value: Any, depth: int = 0) -> list[str]:
    """The strings inside a rejected input (a field value, or a whole body for model errors)."""
    if isinstance(value, str):
        return [value]
    if depth >= 3:
        return []
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item, depth + 1)]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _strings(item, depth + 1)]
    return []


def _safe_msg(err: Any) -> str:
    """pydantic's message, unless it quotes the rejected input.

    Most messages only describe the rule, but some validators quote what they rejected
    (email-validator names offending characters and parts): then only the type is said.
    """
    msg = redact_text(str(err.get("msg", "")))
    # What the rule expects ("'female', 'male', ...") is not an echo, even if input matches.
    probe = msg
    for expected in (err.get("ctx") or {}).values():
        if isinstance(expected, str):
            probe = probe.replace(expected, "")
    for text in _strings(err.get("input")):
        words = [text.strip(), *_WORD.findall(text)]
        if any(len(word) >= _ECHO_MIN and word in probe for word in words):
            return "invalid value"
    return msg


def safe_key(key: object) -> str:
    """``key`` when it looks like a field name, else ``"?"`` (for logs and error bodies)."""
    text = str(key)
    return text if _SAFE_KEY.fullmatch(text) else "?"


def _safe_loc(err: Any) -> list[str | int]:
    """The error's location; an unknown key the client sent is named only if it is safe."""
    loc = list(err.get("loc", ()))
    if loc and err.get("type") == "extra_forbidden":
        loc[-1] = safe_key(loc[-1])
    # Our own locations are ASCII field names (and pydantic's union tags); anything else
    # came from the request.
    return [
        part if isinstance(part, int) or (part.isascii() and part.isprintable()) else "?"
        for part in loc
    ]


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Echo where and why, never the rejected input (it may be PHI or a password): pydantic's
    # ``input`` and ``ctx`` are dropped and a message that quotes the input is replaced.
    details = [
        {"loc": _safe_loc(err), "msg": _safe_msg(err), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    return error_response(422, "validation_error", "request validation failed", details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
        exc.status_code, "http_error"
    )
    return error_response(
        exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}) or None
    )


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled_error", error_type=type(exc).__name__)
    return error_response(500, "internal_error", "internal error")


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HealthdbError, _library_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
