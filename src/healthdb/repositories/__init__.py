"""Typed data access over an ``AsyncSession``: one repository per model.

Repositories rely on the isolation walls for clinic scoping and never add clinic filters.
"""

from healthdb.repositories.appointments import AppointmentRepository
from healthdb.repositories.base import MAX_IDS, Repository
from healthdb.repositories.clinics import ClinicRepository
from healthdb.repositories.logins import LoginRoute, find_login
from healthdb.repositories.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Cursor,
    Page,
    check_limit,
    decode_cursor,
    encode_cursor,
)
from healthdb.repositories.patient_views import PatientRecord
from healthdb.repositories.patients import PatientRepository, escape_like
from healthdb.repositories.users import UserRepository, normalize_email

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_IDS",
    "MAX_LIMIT",
    "AppointmentRepository",
    "ClinicRepository",
    "Cursor",
    "LoginRoute",
    "Page",
    "PatientRecord",
    "PatientRepository",
    "Repository",
    "UserRepository",
    "check_limit",
    "decode_cursor",
    "encode_cursor",
    "escape_like",
    "find_login",
    "normalize_email",
]
