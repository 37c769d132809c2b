"""Account creation outside HTTP (``healthdb create-user``), with the same policy and the
same write path as the users routes."""

from __future__ import annotations

import uuid

from email_validator import EmailNotValidError, validate_email
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import (
    ConflictError,
    DatabaseService,
    InvalidInput,
    QueryOptions,
    Role,
    as_uuid,
)
from healthdb.clinics import create_clinic
from healthdb.migrate import upgrade
from healthdb.models import Clinic
from healthdb.repositories import normalize_email
from healthdb_api import fields
from healthdb_api.auth.passwords import WeakPassword, check_password_policy, hash_password
from healthdb_api.auth.routes import add_user, email_taken
from healthdb_api.settings import ApiSettings


class AccountError(Exception):
    """The account could not be created; the message says why (never the password)."""


_NAME = TypeAdapter(fields.Name)


def _name(value: str, what: str) -> str:
    """``value`` as the HTTP routes would store it (the same rule), or :class:`InvalidInput`."""
    try:
        return _NAME.validate_python(value)
    except ValidationError as exc:
        raise InvalidInput(
            f"{what} {exc.errors()[0]['msg'].removeprefix('Value error, ')}"
        ) from None


async def create_account(
    settings: ApiSettings,
    *,
    email: str,
    password: str,
    full_name: str,
    role: Role,
    clinic_id: str | None = None,
    clinic_name: str | None = None,
) -> tuple[uuid.UUID, uuid.UUID]:
    """Create a user in an existing clinic, or in a new clinic named ``clinic_name``."""
    try:
        email = normalize_email(validate_email(email, check_deliverability=False).normalized)
        full_name = _name(full_name, "full name")
        clinic_name = None if clinic_name is None else _name(clinic_name, "clinic name")
        check_password_policy(password, email=email, user_inputs=(full_name,))
        target = as_uuid(clinic_id, "clinic_id") if clinic_id else None
    except (EmailNotValidError, WeakPassword, InvalidInput) as exc:
        raise AccountError(str(exc)) from None
    if settings.auto_migrate and not settings.is_postgres:
        await upgrade(settings.admin_url)
    async with DatabaseService.connect(settings) as db:
        if await email_taken(db, email):
            raise AccountError("an account with this e-mail already exists")
        clinic = target or await create_clinic(db, clinic_name or "Clinic")
        password_hash = hash_password(password)

        async def op(session: AsyncSession) -> uuid.UUID:
            if await session.get(Clinic, clinic) is None:
                raise AccountError("no such clinic")
            user = await add_user(
                session,
                clinic_id=clinic,
                email=email,
                password_hash=password_hash,
                full_name=full_name,
                role=role,
            )
            return user.id

        try:
            async with db.clinic(clinic, role=Role.CLINIC_ADMIN, purpose="administration"):
                user_id = await db.execute_write(op, QueryOptions.for_write("cli.create_user"))
        except ConflictError:
            raise AccountError("an account with this e-mail already exists") from None
        return user_id, clinic
