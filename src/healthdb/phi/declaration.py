"""PHI declared once, on the column: ``mapped_column(..., info=phi(PhiKind.SSN))``.

Masking (:mod:`healthdb.phi.masking`), log redaction, encryption and the audit trail all
read this declaration; nothing else keeps its own list of PHI fields. A column whose name
looks like PHI but is not (a staff member's email, say) says so with :func:`not_phi`, and a
test fails for any PHI-looking column that declares neither.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import inspect

__all__ = [
    "PHI_INFO_KEY",
    "PHI_LOOKING",
    "PhiKind",
    "is_declared",
    "not_phi",
    "phi",
    "phi_fields",
    "phi_kind",
]

PHI_INFO_KEY = "healthdb.phi"


class PhiKind(enum.StrEnum):
    """What a PHI column holds; the masking policy is written per kind."""

    NAME = "name"
    SSN = "ssn"
    DOB = "dob"
    PHONE = "phone"
    EMAIL = "email"
    ADDRESS = "address"
    MRN = "mrn"
    DEMOGRAPHIC = "demographic"
    VISIT_REASON = "visit_reason"
    CLINICAL_NOTE = "clinical_note"
    #: A bulk export file: resources already masked for the role that requested them.
    BULK_EXPORT = "bulk_export"


#: Column names that look like PHI; each must be declared with :func:`phi` or :func:`not_phi`.
PHI_LOOKING = re.compile(
    r"name|ssn|social|birth|dob|phone|mobile|fax|email|mail|address|street|city|zip|postal"
    r"|mrn|record|note|reason|diagnos|sex|gender|insurance|license|ip_addr",
    re.IGNORECASE,
)


def phi(kind: PhiKind) -> dict[str, Any]:
    """``info=`` for a PHI column of ``kind``."""
    return {PHI_INFO_KEY: PhiKind(kind)}


def not_phi(why: str) -> dict[str, Any]:
    """``info=`` for a column whose name looks like PHI but is not; say why."""
    if not why.strip():
        raise ValueError("not_phi needs a reason")
    return {PHI_INFO_KEY: None, "healthdb.not_phi": why}


def is_declared(info: Mapping[str, Any]) -> bool:
    """True when a column's ``info`` says PHI or not, either way."""
    return PHI_INFO_KEY in info


def phi_kind(info: Mapping[str, Any]) -> PhiKind | None:
    value = info.get(PHI_INFO_KEY)
    return value if isinstance(value, PhiKind) else None


_FIELDS: dict[type[Any], Mapping[str, PhiKind]] = {}


def phi_fields(model: type[Any]) -> Mapping[str, PhiKind]:
    """``{attribute name: kind}`` of a mapped class's PHI columns (empty for none)."""
    known = _FIELDS.get(model)
    if known is None:
        known = _FIELDS[model] = _declared(model)
    return known


def _declared(model: type[Any]) -> Mapping[str, PhiKind]:
    mapper = inspect(model, raiseerr=False)
    if mapper is None:
        return {}
    fields: dict[str, PhiKind] = {}
    for attr in mapper.column_attrs:
        for column in attr.columns:
            kind = phi_kind(column.info)
            if kind is not None:
                fields[attr.key] = kind
    return fields
