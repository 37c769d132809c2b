"""Patient ↔ FHIR R4 ``Patient``: the one mapping, documented as a table in docs/fhir.md.

Reading: :func:`to_resource` turns a patient as the library hands it out (a
:class:`~healthdb.repositories.PatientRecord` or a committed ``Patient``, already masked for
the caller's role) into a resource; a masked value is marked with the ``REDACTED`` security
label. Writing: :func:`parse_patient` validates a resource with the R4 models of
``fhir.resources`` (structure, datatypes, primitive formats) and then with the service's own
rules (:class:`~healthdb_api.schemas.PatientCreate`: NFC, lengths, E.164 phones, e-mail
syntax, no birth date in the future), and returns the column values. Every problem is an
:class:`Issue` naming the element, never its value.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from fhir.resources.R4B.address import Address
from fhir.resources.R4B.humanname import HumanName
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.patient import Patient as FhirPatient
from pydantic import ValidationError

from healthdb.phi import MaskedValue
from healthdb_api.errors import _safe_msg
from healthdb_api.fhir.outcome import Issue
from healthdb_api.schemas import PatientCreate

__all__ = [
    "FIELDS",
    "SSN_SYSTEM",
    "InvalidResource",
    "PatientLike",
    "looks_masked",
    "parse_patient",
    "to_resource",
]

SSN_SYSTEM = "http://hl7.org/fhir/sid/us-ssn"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_REDACTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "REDACTED",
    "display": "redacted",
}
_GENDERS = frozenset({"male", "female", "other", "unknown"})
#: Column → the element it comes from (for messages about the column's own rules).
FIELDS = {
    "mrn": "Patient.identifier",
    "given_name": "Patient.name.given",
    "family_name": "Patient.name.family",
    "date_of_birth": "Patient.birthDate",
    "sex": "Patient.gender",
    "phone": "Patient.telecom",
    "email": "Patient.telecom",
    "address": "Patient.address",
    "ssn": "Patient.identifier",
}


class PatientLike(Protocol):
    """What :func:`to_resource` reads: a ``PatientRecord`` or a committed ``Patient``."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def mrn(self) -> str: ...
    @property
    def given_name(self) -> str: ...
    @property
    def family_name(self) -> str: ...
    @property
    def date_of_birth(self) -> dt.date: ...
    @property
    def sex(self) -> str: ...
    @property
    def phone(self) -> str | None: ...
    @property
    def email(self) -> str | None: ...
    @property
    def address(self) -> str | None: ...
    @property
    def ssn(self) -> str | None: ...
    @property
    def version(self) -> int: ...
    @property
    def updated_at(self) -> dt.datetime: ...


class InvalidResource(Exception):
    """The resource is not a Patient this service can store; ``issues`` say why."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        super().__init__("; ".join(issue.message for issue in issues))
        self.issues = list(issues)


def instant(stamp: dt.datetime) -> str:
    """A FHIR ``instant`` (UTC, ``Z``)."""
    return stamp.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _identifier(code: str, system: str, value: str) -> dict[str, Any]:
    return {
        "type": {"coding": [{"system": V2_0203, "code": code}]},
        "system": system,
        "value": value,
    }


def to_resource(patient: PatientLike, *, mrn_system: str) -> dict[str, Any]:
    """The FHIR ``Patient`` for ``patient`` (JSON-ready; values already masked)."""
    meta: dict[str, Any] = {
        "versionId": str(patient.version),
        "lastUpdated": instant(patient.updated_at),
    }
    if isinstance(patient.ssn, MaskedValue):
        meta["security"] = [_REDACTED]
    identifiers = [_identifier("MR", mrn_system, patient.mrn)]
    if patient.ssn:
        identifiers.append(_identifier("SS", SSN_SYSTEM, patient.ssn))
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(patient.id),
        "meta": meta,
        "identifier": identifiers,
        "name": [{"use": "official", "family": patient.family_name, "given": [patient.given_name]}],
    }
    telecom = [
        {"system": system, "value": value}
        for system, value in (("phone", patient.phone), ("email", patient.email))
        if value
    ]
    if telecom:
        resource["telecom"] = telecom
    resource["gender"] = patient.sex if patient.sex in _GENDERS else "unknown"
    resource["birthDate"] = patient.date_of_birth.isoformat()
    if patient.address:
        resource["address"] = [{"use": "home", "text": patient.address}]
    return resource


def looks_masked(value: object) -> bool:
    """True for a value shaped like one the service masks (``***-**-1234``): storing it
    would overwrite the real one."""
    return isinstance(value, str) and "*" in value


def parse_patient(body: Any, *, mrn_system: str) -> PatientCreate:
    """The column values of a FHIR ``Patient`` (``id``, ``meta`` and unmapped elements are
    not stored); raises :class:`InvalidResource`."""
    try:
        resource = FhirPatient.model_validate(body)
    except ValidationError as exc:
        raise InvalidResource([_issue(err, "Patient") for err in exc.errors()]) from None
    issues: list[Issue] = []
    fields = {
        "mrn": _mrn(resource.identifier or [], mrn_system, issues),
        "ssn": _ssn(resource.identifier or [], issues),
        **_names(resource.name or [], issues),
        "date_of_birth": _birth_date(resource.birthDate, issues),
        "sex": _gender(resource.gender, issues),
        "phone": _telecom(resource, "phone"),
        "email": _telecom(resource, "email"),
        "address": _address(resource.address or []),
    }
    if issues:
        raise InvalidResource(issues)
    try:
        return PatientCreate.model_validate(fields)
    except ValidationError as exc:
        raise InvalidResource([_field_issue(err) for err in exc.errors()]) from None


def _issue(err: Any, root: str) -> Issue:
    loc = list(err.get("loc", ()))
    message = _safe_msg(err)
    if err.get("type") == "extra_forbidden" and loc:
        # The last part is the client's own key: input, so never echoed (it could be PHI).
        loc, message = loc[:-1], "an element this resource type does not define"
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return Issue(message, path)


def _field_issue(err: Any) -> Issue:
    loc = err.get("loc", ())
    element = FIELDS.get(str(loc[0]), "Patient") if loc else "Patient"
    return Issue(_safe_msg(err), element)


def _is_mrn(identifier: Identifier, mrn_system: str) -> bool:
    if identifier.system == mrn_system:
        return True
    # Another system's MRN (no system of ours): recognised by its v2-0203 type code.
    codings = identifier.type.coding if identifier.type and identifier.type.coding else []
    return identifier.system != SSN_SYSTEM and any(
        c.system == V2_0203 and c.code == "MR" for c in codings
    )


def _one_value(found: list[str], what: str, issues: list[Issue]) -> str | None:
    values = list(dict.fromkeys(found))
    if len(values) > 1:
        issues.append(Issue(f"more than one {what} identifier", "Patient.identifier"))
    return values[0] if values else None


def _mrn(identifiers: list[Identifier], mrn_system: str, issues: list[Issue]) -> str | None:
    found = [i.value for i in identifiers if i.value and _is_mrn(i, mrn_system)]
    mrn = _one_value(found, "medical record number", issues)
    if mrn is None:
        issues.append(
            Issue(
                f"an identifier with system {mrn_system} (the medical record number) is required",
                "Patient.identifier",
                "required",
            )
        )
    return mrn


def _ssn(identifiers: list[Identifier], issues: list[Issue]) -> str | None:
    found = [i.value for i in identifiers if i.system == SSN_SYSTEM and i.value]
    return _one_value(found, "US SSN", issues)


def _names(names: list[HumanName], issues: list[Issue]) -> dict[str, str | None]:
    ranked = sorted(names, key=lambda n: {"official": 0, "usual": 1}.get(n.use or "", 2))
    chosen = ranked[0] if ranked else None
    family = chosen.family if chosen else None
    given = " ".join(g for g in chosen.given or [] if g) if chosen else None
    if not family or not given:
        issues.append(
            Issue(
                "a name with a family name and a given name is required", "Patient.name", "required"
            )
        )
    return {"family_name": family, "given_name": given}


def _birth_date(value: object, issues: list[Issue]) -> dt.date | None:
    if isinstance(value, dt.date):
        return value
    message = "birthDate is required" if value is None else "birthDate must be a full date"
    issues.append(Issue(f"{message} (YYYY-MM-DD)", "Patient.birthDate", "required"))
    return None


def _gender(value: str | None, issues: list[Issue]) -> str:
    if value is None:
        return "unknown"  # administrative gender not recorded
    if value not in _GENDERS:
        issues.append(
            Issue("gender must be male, female, other or unknown", "Patient.gender", "code-invalid")
        )
    return value


def _telecom(resource: FhirPatient, system: str) -> str | None:
    return next((t.value for t in resource.telecom or [] if t.system == system and t.value), None)


def _address(addresses: list[Address]) -> str | None:
    ranked = sorted(addresses, key=lambda a: 0 if a.use == "home" else 1 if a.use != "old" else 2)
    if not ranked:
        return None
    first = ranked[0]
    if first.text:
        return first.text
    region = " ".join(part for part in (first.state, first.postalCode) if part)
    parts = [*(first.line or []), first.city, region, first.country]
    return ", ".join(part for part in parts if part) or None
