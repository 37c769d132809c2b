"""Patients: search by name prefix, MRN and date of birth. Soft-deleted rows are hidden."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import ColumnElement, func, literal, or_
from sqlalchemy.orm import InstrumentedAttribute

from healthdb.errors import InvalidInput
from healthdb.models import Patient
from healthdb.phi.crypto import current_keyring, normalise_for_index
from healthdb.repositories.base import Repository
from healthdb.repositories.pagination import DEFAULT_LIMIT, Page

#: Longest name prefix accepted by :meth:`PatientRepository.search` (the column width).
MAX_NAME_PREFIX = 200
#: :meth:`PatientRepository.find_by_ssn` returns at most this many patients (an SSN should
#: name one person; a handful of duplicates are data errors worth seeing, not paging).
MAX_SSN_MATCHES = 20
#: Longest SSN input accepted (far above any real format; bounds the hashing work).
MAX_SSN_LENGTH = 64


def escape_like(value: str) -> str:
    """Escape LIKE wildcards so user input matches literally (escape character ``\\``)."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class PatientRepository(Repository[Patient]):
    """Patients of one clinic (the walls scope every read)."""

    model = Patient
    sortable: ClassVar[dict[str, InstrumentedAttribute[Any]]] = {
        "created_at": Patient.created_at,
        "updated_at": Patient.updated_at,
        "family_name": Patient.family_name,
        "given_name": Patient.given_name,
        "date_of_birth": Patient.date_of_birth,
        "mrn": Patient.mrn,
    }

    async def by_mrn(self, mrn: str) -> Patient | None:
        """The visible patient with this medical record number, or ``None``.

        MRNs are unique per clinic, so this relies on the walls scoping the read to one.
        """
        stmt = self._select().where(Patient.mrn == mrn)
        return (await self.session.scalars(stmt)).one_or_none()

    async def find_by_ssn(self, ssn: str) -> list[Patient]:
        """Visible patients whose SSN equals ``ssn``, through the blind index.

        The HMAC of the normalised input is compared with ``ssn_index``, so no stored SSN
        is decrypted to search and ``123-45-6789`` matches ``123 45 6789``. At most
        :data:`MAX_SSN_MATCHES` patients, oldest first.
        """
        if not isinstance(ssn, str) or len(ssn) > MAX_SSN_LENGTH:
            raise InvalidInput(f"ssn must be a string of at most {MAX_SSN_LENGTH} characters")
        if not normalise_for_index(ssn):
            raise InvalidInput("ssn must contain letters or digits")
        # Under every index key still configured: an index value computed before the index
        # key rotated matches until the rotation has recomputed it.
        candidates = current_keyring().blind_index_candidates(ssn)
        stmt = (
            self._select()
            .where(Patient.ssn_index.in_(candidates))
            .order_by(Patient.created_at, Patient.id)
            .limit(MAX_SSN_MATCHES)
        )
        return list((await self.session.scalars(stmt)).all())

    async def search(
        self,
        *,
        name: str | None = None,
        mrn: str | None = None,
        date_of_birth: dt.date | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_LIMIT,
        sort: str = "family_name",
        descending: bool = False,
    ) -> Page[Patient]:
        """Patients matching every given criterion.

        ``name`` is a case-insensitive prefix of the given *or* family name, matched
        literally (``%`` and ``_`` are not wildcards); ``mrn`` and ``date_of_birth`` match
        exactly. Without criteria this lists every visible patient.
        """
        where: list[ColumnElement[bool]] = []
        if name is not None and name.strip():
            where.append(_name_prefix(name.strip()))
        if mrn is not None:
            where.append(Patient.mrn == mrn)
        if date_of_birth is not None:
            # datetime is a date subclass; a timestamp here would compare as a string.
            if isinstance(date_of_birth, dt.datetime) or not isinstance(date_of_birth, dt.date):
                raise InvalidInput("date_of_birth must be a date")
            where.append(Patient.date_of_birth == date_of_birth)
        return await self.list(
            cursor=cursor, limit=limit, sort=sort, descending=descending, where=where
        )


def _name_prefix(prefix: str) -> ColumnElement[bool]:
    if len(prefix) > MAX_NAME_PREFIX:
        raise InvalidInput(f"name must be at most {MAX_NAME_PREFIX} characters")
    # lower() on both sides in SQL, so pattern and column fold case the same way (SQLite's
    # lower() only folds ASCII; Python's str.lower() would disagree on other letters).
    pattern = func.lower(literal(escape_like(prefix) + "%"))
    return or_(
        func.lower(Patient.given_name).like(pattern, escape="\\"),
        func.lower(Patient.family_name).like(pattern, escape="\\"),
    )
