"""Request and response bodies of the auth and users routes (pydantic v2).

Requests forbid unknown fields, trim and normalise text, and bound every length before any
work is done; names follow the one text rule of :mod:`healthdb_api.fields`. Passwords are
bounded here only loosely (so a megabyte never reaches argon2); the policy with its helpful
messages lives in :mod:`healthdb_api.auth.passwords`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, EmailStr, Field

from healthdb import Role
from healthdb.models import Clinic, User
from healthdb_api import fields
from healthdb_api.fields import Encodable

MAX_EMAIL = 320
#: Loose bound for passwords presented at login (the policy caps new ones at 128).
MAX_PASSWORD_INPUT = 1024
#: ``<uuid>.<43 urlsafe chars>`` is 80 characters; leave room, refuse anything absurd.
MAX_REFRESH_TOKEN = 256


def _email_input(value: object) -> object:
    if isinstance(value, str):
        value = value.strip()
        if len(value) > MAX_EMAIL:
            raise ValueError(f"email must be at most {MAX_EMAIL} characters")
    return value


def _lower(value: str) -> str:
    return value.lower()


#: A syntactically valid address, trimmed and lowercased (the stored form).
Email = Annotated[EmailStr, BeforeValidator(_email_input), AfterValidator(_lower)]
#: A display name (a person's, a clinic's): the one text rule of :mod:`healthdb_api.fields`.
Name = fields.Name
# Secrets are taken as typed; only text that cannot be encoded is refused.
NewPassword = Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD_INPUT), Encodable]
LoginPassword = Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD_INPUT), Encodable]
RefreshTokenStr = Annotated[str, Field(min_length=1, max_length=MAX_REFRESH_TOKEN), Encodable]


class InputModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RegisterIn(InputModel):
    clinic_name: Name
    email: Email
    password: NewPassword
    full_name: Name


class LoginIn(InputModel):
    email: Email
    password: LoginPassword


class RefreshIn(InputModel):
    refresh_token: RefreshTokenStr


class UserCreateIn(InputModel):
    email: Email
    password: NewPassword
    full_name: Name
    role: Role


class UserPatchIn(InputModel):
    role: Role | None = None
    active: bool | None = None
    full_name: Name | None = None


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    full_name: str
    role: Role
    clinic_id: uuid.UUID
    active: bool
    created_at: dt.datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id,
            email=user.email,
            full_name=user.full_name,
            role=Role.parse(user.role),
            clinic_id=user.clinic_id,
            active=user.active,
            created_at=user.created_at,
        )


class ClinicOut(BaseModel):
    id: uuid.UUID
    name: str

    @classmethod
    def of(cls, clinic: Clinic) -> ClinicOut:
        return cls(id=clinic.id, name=clinic.name)


class RegisterOut(BaseModel):
    user: UserOut
    clinic: ClinicOut


class TokenOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - a token type, not a secret
    expires_in: int


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None
