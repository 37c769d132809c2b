"""Request and response bodies of the patients and appointments routes.

Every string is NFC-normalised, follows the one text rule of :mod:`healthdb_api.fields`
(no surrogates, no control characters, no invisible formatting in single-line fields) and
is bounded by its database column; times carry a UTC offset and fall within years 1-9999
in UTC. Values are otherwise stored verbatim: ``O'Brien`` stays ``O'Brien``. Request
bodies refuse unknown fields (typos fail loudly).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal, Self

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    model_validator,
)

from healthdb_api import fields
from healthdb_api.fields import Instant, MultiLineRule, Nfc, SingleLine, Trimmed, bounded

#: The accepted values of ``sex`` (administrative sex, as on most intake forms).
Sex = Literal["female", "male", "other", "unknown"]

#: Longest clinical note accepted (the column is TEXT; this bounds a single request).
MAX_NOTES = 20_000
#: Longest appointment (a longer one is almost certainly a typo in a date).
MAX_APPOINTMENT = dt.timedelta(hours=12)
#: Birth dates are compared with "today" in the earliest time zone on Earth (UTC+14), so a
#: baby born today anywhere is never rejected as born in the future.
_EARLIEST_ZONE = dt.timezone(dt.timedelta(hours=14))
#: The largest version a 32-bit version column holds.
MAX_VERSION = 2**31 - 1


def _e164(value: str) -> str:
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValueError(
            "phone must be an international number starting with + and a country code"
        ) from None
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("phone is not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _not_future(value: dt.date) -> dt.date:
    if value > dt.datetime.now(_EARLIEST_ZONE).date():
        raise ValueError("date_of_birth must not be in the future")
    return value


# Single-line strings: NFC, trimmed, the text rule of :mod:`healthdb_api.fields`, bounded
# by their column.
Mrn = Annotated[str, Trimmed, bounded(64, min_length=1), SingleLine]
Name = fields.Name
Address = Annotated[str, Trimmed, bounded(500), SingleLine]
Ssn = Annotated[str, Trimmed, bounded(64), SingleLine]
Reason = Annotated[str, Trimmed, bounded(500), SingleLine]
# Notes keep their whitespace and line breaks.
Notes = Annotated[str, Nfc, StringConstraints(max_length=MAX_NOTES), MultiLineRule]
Phone = Annotated[str, Trimmed, bounded(32, min_length=1), AfterValidator(_e164)]
Email = Annotated[EmailStr, Trimmed, Field(max_length=320)]
#: Versions are 32-bit in the database; a larger one cannot match and is refused early.
Version = Annotated[int, Field(ge=1, le=MAX_VERSION)]
BirthDate = Annotated[dt.date, AfterValidator(_not_future)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- patients ------------------------------------------------------------------------------


class PatientCreate(_Request):
    """``POST /api/v1/patients``."""

    mrn: Mrn
    given_name: Name
    family_name: Name
    date_of_birth: BirthDate
    sex: Sex
    phone: Phone | None = None
    email: Email | None = None
    address: Address | None = None
    ssn: Ssn | None = None
    notes: Notes | None = None


class SsnLookup(_Request):
    """``POST /api/v1/patients/ssn-lookup``: the SSN travels in the body, never in a URL
    (URLs end up in proxy logs, browser history and Referer headers)."""

    ssn: Annotated[str, Trimmed, bounded(64, min_length=1), SingleLine]


#: Fields a PATCH may set to ``null`` (the nullable columns); the others may only change.
NULLABLE_PATIENT_FIELDS = frozenset({"phone", "email", "address", "ssn", "notes"})


class PatientUpdate(_Request):
    """``PATCH /api/v1/patients/{id}``: only the fields present change.

    ``version`` is the version the client last read; it may be sent here instead of in
    an ``If-Match`` header.
    """

    mrn: Mrn | None = None
    given_name: Name | None = None
    family_name: Name | None = None
    date_of_birth: BirthDate | None = None
    sex: Sex | None = None
    phone: Phone | None = None
    email: Email | None = None
    address: Address | None = None
    ssn: Ssn | None = None
    notes: Notes | None = None
    version: Version | None = None

    @model_validator(mode="after")
    def _required_stay_set(self) -> Self:
        cleared = sorted(
            name
            for name in self.model_fields_set - NULLABLE_PATIENT_FIELDS - {"version"}
            if getattr(self, name) is None
        )
        if cleared:
            raise ValueError(f"field(s) cannot be null: {', '.join(cleared)}")
        return self

    def changes(self) -> dict[str, Any]:
        """The column values this request sets (``version`` excluded)."""
        return {name: getattr(self, name) for name in self.model_fields_set if name != "version"}


class PatientOut(BaseModel):
    """A patient as returned to the caller. ``ssn`` and ``notes`` are ``null`` for roles
    that may not see them (receptionists)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    mrn: str
    given_name: str
    family_name: str
    date_of_birth: dt.date
    sex: str
    phone: str | None
    email: str | None
    address: str | None
    ssn: str | None
    notes: str | None
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


class PatientPage(BaseModel):
    items: list[PatientOut]
    next_cursor: str | None


# -- appointments --------------------------------------------------------------------------


class AppointmentCreate(_Request):
    """``POST /api/v1/appointments``: times must carry a UTC offset."""

    patient_id: uuid.UUID
    clinician_id: uuid.UUID
    start_at: Instant
    end_at: Instant
    reason: Reason | None = None

    @model_validator(mode="after")
    def _sane_window(self) -> Self:
        if self.end_at <= self.start_at:
            raise ValueError("end_at must be after start_at")
        if self.end_at - self.start_at > MAX_APPOINTMENT:
            raise ValueError("an appointment may last at most 12 hours")
        return self


class AppointmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    patient_id: uuid.UUID
    clinician_id: uuid.UUID
    start_at: dt.datetime
    end_at: dt.datetime
    reason: str | None
    status: str
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


class AppointmentPage(BaseModel):
    items: list[AppointmentOut]
    next_cursor: str | None
