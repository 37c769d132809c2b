"""The request side of the FHIR face: the app's FHIR state, URLs, bodies and headers."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request

from healthdb_api.fhir.outcome import FhirError
from healthdb_api.fhir.settings import FhirSettings

if TYPE_CHECKING:
    from healthdb_api.fhir.export import ExportRunner

__all__ = ["FhirState", "base_url", "not_found", "patient_uuid", "prefers", "read_json", "state"]

#: Request bodies the FHIR face accepts (``application/json`` is what most clients send).
_JSON_TYPES = frozenset({"application/fhir+json", "application/json"})


@dataclass(frozen=True, slots=True)
class FhirState:
    """What the FHIR routes share for the app's lifetime (``app.state.fhir``)."""

    settings: FhirSettings
    runner: ExportRunner


def state(request: Request) -> FhirState:
    found: FhirState = request.app.state.fhir
    return found


def base_url(request: Request) -> str:
    """The FHIR base, ``http(s)://host[:port]/fhir``, for links the client follows."""
    return str(request.base_url).rstrip("/") + "/fhir"


def prefers(request: Request, token: str) -> bool:
    """True when the ``Prefer`` header carries ``token`` (``respond-async``,
    ``handling=strict``, ...)."""
    header = request.headers.get("prefer", "")
    return any(part.strip().lower() == token for part in header.split(","))


def not_found(what: str = "Patient") -> FhirError:
    """The one 404: missing, deleted and another clinic's resources answer alike."""
    return FhirError(404, f"{what} not found")


def patient_uuid(value: str) -> uuid.UUID:
    """The id of a URL as a UUID; anything else names no resource here (404)."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise not_found() from None


async def read_json(request: Request) -> Any:
    """The request body as JSON: ``application/fhir+json`` (or ``application/json``)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in _JSON_TYPES:
        raise FhirError(415, "send the resource as application/fhir+json", code="not-supported")
    try:
        return json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        position = getattr(exc, "pos", None)
        where = f" (at character {position})" if isinstance(position, int) else ""
        raise FhirError(400, f"the body is not valid JSON{where}", code="structure") from None
