"""The FHIR face's one error body, an ``OperationOutcome``, and the route class that turns
every error raised under ``/fhir`` into one.

The rest of the service answers ``{"error": {...}}``; a FHIR client expects an
``OperationOutcome`` with the issue's type and, where it helps, a FHIRPath ``expression``
naming the element. Messages follow the service's rules: they say where and why, never
the rejected value (it may be PHI), and a 500 names nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from healthdb import DatabaseUnavailable, HealthdbError, RateLimited
from healthdb_api.errors import STATUS, ApiError, _safe_msg

__all__ = [
    "FHIR_JSON",
    "FhirError",
    "FhirRoute",
    "Issue",
    "dump",
    "error_response",
    "operation_outcome",
    "resource_response",
]

log = structlog.get_logger("healthdb_api.fhir")

FHIR_JSON = "application/fhir+json"

#: The issue type (``OperationOutcome.issue.code``) an HTTP status implies.
_ISSUE_TYPES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    428: "required",
    429: "throttled",
    503: "transient",
}


@dataclass(frozen=True, slots=True)
class Issue:
    """One ``OperationOutcome.issue``: a PHI-free message, optionally the FHIRPath of the
    element concerned and an issue type (default: the one the HTTP status implies)."""

    message: str
    expression: str | None = None
    code: str | None = None


class FhirError(Exception):
    """An error a FHIR route answers with ``status`` and an ``OperationOutcome``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        expression: str | None = None,
        issues: Sequence[Issue] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.issues = list(issues) or [Issue(message, expression, code)]
        self.headers = dict(headers or {})


def dump(body: Any) -> bytes:
    """Compact JSON, UTF-8 (names in any script stay readable)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def resource_response(
    body: Any, status: int = 200, *, headers: Mapping[str, str] | None = None
) -> Response:
    """A FHIR resource (or Bundle) as ``application/fhir+json``."""
    return Response(dump(body), status_code=status, media_type=FHIR_JSON, headers=headers)


def operation_outcome(issues: Sequence[Issue], status: int) -> dict[str, Any]:
    """The ``OperationOutcome`` resource for ``issues`` answered with ``status``."""
    default = _ISSUE_TYPES.get(status, "exception")
    rendered = []
    for issue in issues:
        item: dict[str, Any] = {
            "severity": "error",
            "code": issue.code or default,
            "diagnostics": issue.message,
        }
        if issue.expression:
            item["expression"] = [issue.expression]
        rendered.append(item)
    return {"resourceType": "OperationOutcome", "issue": rendered}


def _outcome(
    status: int, issues: Sequence[Issue], headers: Mapping[str, str] | None = None
) -> Response:
    return resource_response(operation_outcome(issues, status), status, headers=headers)


def error_response(exc: Exception) -> Response:
    """Any exception raised under ``/fhir`` as an ``OperationOutcome`` response."""
    if isinstance(exc, FhirError):
        return _outcome(exc.status, exc.issues, exc.headers)
    if isinstance(exc, ApiError):
        return _outcome(exc.status, _api_issues(exc), exc.headers)
    if isinstance(exc, HealthdbError):
        return _library_error(exc)
    if isinstance(exc, RequestValidationError):
        issues = [
            Issue(_safe_msg(err), ".".join(str(part) for part in err.get("loc", ())))
            for err in exc.errors()
        ]
        return _outcome(400, issues or [Issue("request validation failed")])
    if isinstance(exc, StarletteHTTPException):
        headers = dict(exc.headers or {}) or None
        return _outcome(exc.status_code, [Issue(str(exc.detail))], headers)
    log.error("fhir_unhandled_error", error_type=type(exc).__name__)
    return _outcome(500, [Issue("internal error")])


def _api_issues(exc: ApiError) -> list[Issue]:
    details = exc.details if isinstance(exc.details, list) else []
    issues = [
        Issue(f"{exc.message}: {detail.get('msg', '')}", _location(detail.get("loc")))
        for detail in details
        if isinstance(detail, dict)
    ]
    return issues or [Issue(exc.message)]


def _location(loc: Any) -> str | None:
    if not isinstance(loc, list | tuple):
        return None
    return ".".join(str(part) for part in loc) or None


def _library_error(exc: HealthdbError) -> Response:
    status = next((code for kind, code in STATUS if isinstance(exc, kind)), 500)
    if status == 500:
        log.error("fhir_library_error", code=exc.code)
        return _outcome(500, [Issue("internal error")])
    headers = None
    if isinstance(exc, DatabaseUnavailable):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    elif isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return _outcome(status, [Issue(str(exc))], headers)


class FhirRoute(APIRoute):
    """An ``APIRoute`` whose every error, from authentication to the handler, answers an
    ``OperationOutcome`` (the service-wide handlers would answer ``{"error": ...}``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return error_response(exc)

        return guarded
