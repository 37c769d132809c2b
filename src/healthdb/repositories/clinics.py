"""Clinics: the tenants themselves (not a tenant table, so the walls do not scope it)."""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy.orm import InstrumentedAttribute

from healthdb.models import Clinic
from healthdb.repositories.base import Repository


class ClinicRepository(Repository[Clinic]):
    """Get, add and list clinics; inherits everything from :class:`Repository`."""

    model = Clinic
    sortable: ClassVar[dict[str, InstrumentedAttribute[Any]]] = {
        "created_at": Clinic.created_at,
        "name": Clinic.name,
    }
