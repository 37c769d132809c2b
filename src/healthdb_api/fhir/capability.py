"""``GET /fhir/metadata``: the CapabilityStatement, what a FHIR client reads first."""

from __future__ import annotations

from typing import Any

from healthdb_api.fhir.mapping import SSN_SYSTEM

__all__ = ["FHIR_VERSION", "capability_statement"]

#: The FHIR release served (R4); resources are validated with fhir.resources' R4B models,
#: which keep Patient, Bundle, OperationOutcome and CapabilityStatement as R4 has them.
FHIR_VERSION = "4.0.1"
#: The Bulk Data Access IG's definition of ``Patient/$export``.
PATIENT_EXPORT = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"

_SEARCH_PARAMS = [
    ("family", "string", "starts with, case-insensitive; family:exact matches exactly"),
    ("given", "string", "starts with, case-insensitive"),
    ("birthdate", "date", "YYYY, YYYY-MM or YYYY-MM-DD with eq, lt, le, gt, ge, sa or eb"),
    (
        "identifier",
        "token",
        f"the medical record number (system|value or value); {SSN_SYSTEM} is refused in URLs",
    ),
]


def capability_statement(*, base: str, software_version: str, published: str) -> dict[str, Any]:
    """The server's capabilities: Patient read/vread/create/update/search, JSON only,
    version-aware updates required, and Patient-level bulk export."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published,
        "kind": "instance",
        "software": {"name": "healthdb reference service", "version": software_version},
        "implementation": {"description": "healthdb FHIR R4 face", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "description": (
                        "Bearer access tokens from POST /api/v1/auth/login; every request is "
                        "scoped to the caller's clinic and its answers are masked by role"
                    )
                },
                "resource": [_patient()],
            }
        ],
    }


def _patient() -> dict[str, Any]:
    return {
        "type": "Patient",
        "interaction": [
            {"code": code} for code in ("read", "vread", "update", "create", "search-type")
        ],
        "versioning": "versioned-update",
        "readHistory": False,
        "updateCreate": False,
        "conditionalCreate": False,
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchParam": [
            {"name": name, "type": kind, "documentation": doc} for name, kind, doc in _SEARCH_PARAMS
        ],
        "operation": [{"name": "export", "definition": PATIENT_EXPORT}],
    }
