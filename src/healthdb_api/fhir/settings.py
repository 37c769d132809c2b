"""Settings of the FHIR face, read from ``HEALTHDB_FHIR_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from healthdb.repositories import MAX_LIMIT
from healthdb.repositories.patient_views import MAX_EXPORT_BATCH

#: The identifier system of medical record numbers unless ``HEALTHDB_FHIR_MRN_SYSTEM`` says
#: otherwise (a deployment should name its own, e.g. its organisation's URL).
DEFAULT_MRN_SYSTEM = "urn:healthdb:mrn"


class FhirSettings(BaseSettings):
    """How the FHIR endpoints and the bulk paths behave."""

    model_config = SettingsConfigDict(env_prefix="HEALTHDB_FHIR_", extra="ignore", frozen=True)

    mrn_system: str = Field(
        DEFAULT_MRN_SYSTEM,
        max_length=200,
        description="Identifier.system of the medical record number (an absolute URI)",
    )
    search_page_size: int = Field(20, ge=1, le=MAX_LIMIT, description="default _count")
    export_file_size: int = Field(
        1000, ge=1, le=MAX_EXPORT_BATCH, description="patients per bulk export file"
    )
    export_lease_seconds: float = Field(
        30.0, gt=0, le=3600, description="a worker that stops renewing loses its job after this"
    )
    export_retention_seconds: int = Field(
        86_400, ge=1, description="how long finished exports (and their PHI) are kept"
    )
    export_max_running: int = Field(
        2, ge=1, le=100, description="exports in progress per clinic before 429"
    )

    @field_validator("mrn_system")
    @classmethod
    def _absolute_uri(cls, value: str) -> str:
        scheme, colon, rest = value.partition(":")
        if not colon or not scheme.isascii() or not scheme.isalpha() or not rest or " " in value:
            raise ValueError("must be an absolute URI, e.g. https://clinic.example/mrn")
        return value
