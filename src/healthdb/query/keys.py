"""Cache keys and invalidation tags (the plan's QueryKeyFactory, as plain functions).

A key always embeds the clinic, so one clinic's cached rows can never answer another's
query; a tag names a (table, clinic) pair, so a committed write to that table in that clinic
invalidates exactly the entries that may have read it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable

from healthdb.cache import CacheKey, table_tag

__all__ = [
    "CacheKey",
    "custom",
    "for_appointment",
    "for_clinic",
    "for_patient",
    "for_user",
    "table_tag",
]


def custom(clinic_id: uuid.UUID, name: str, *parts: object, tables: Iterable[str]) -> CacheKey:
    """A key for any query: ``name`` and ``parts`` identify it, ``tables`` are what it reads."""
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:32]
    tags = frozenset(table_tag(t, clinic_id) for t in tables)
    if not tags:
        raise ValueError("a cache key must name at least one table it reads")
    return CacheKey(f"{clinic_id}:{name}:{digest}", tags)


def for_clinic(clinic_id: uuid.UUID) -> CacheKey:
    return CacheKey(f"clinic:{clinic_id}", frozenset({table_tag("clinics", None)}))


def for_user(clinic_id: uuid.UUID, user_id: uuid.UUID) -> CacheKey:
    return CacheKey(f"{clinic_id}:user:{user_id}", frozenset({table_tag("users", clinic_id)}))


def for_patient(clinic_id: uuid.UUID, patient_id: uuid.UUID) -> CacheKey:
    tag = table_tag("patients", clinic_id)
    return CacheKey(f"{clinic_id}:patient:{patient_id}", frozenset({tag}))


def for_appointment(clinic_id: uuid.UUID, appointment_id: uuid.UUID) -> CacheKey:
    tag = table_tag("appointments", clinic_id)
    return CacheKey(f"{clinic_id}:appointment:{appointment_id}", frozenset({tag}))
