"""Staff accounts. E-mail addresses are stored and looked up lowercased."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from sqlalchemy.orm import InstrumentedAttribute

from healthdb.context import Role
from healthdb.errors import InvalidInput
from healthdb.models import User
from healthdb.repositories.base import Repository
from healthdb.repositories.pagination import DEFAULT_LIMIT, Page


def normalize_email(email: str) -> str:
    """The stored form of an address: trimmed and lowercased (lookups are case-insensitive)."""
    if not isinstance(email, str) or not email.strip():
        raise InvalidInput("email must be a non-empty string")
    return email.strip().lower()


class UserRepository(Repository[User]):
    """Users of one clinic (the walls scope every read)."""

    model = User
    sortable: ClassVar[dict[str, InstrumentedAttribute[Any]]] = {
        "created_at": User.created_at,
        "email": User.email,
        "full_name": User.full_name,
        "role": User.role,
    }

    async def add(self, obj: User) -> User:
        """Insert a user, lowercasing the e-mail so the unique index is case-insensitive."""
        if isinstance(obj, User):
            obj.email = normalize_email(obj.email)
        return await super().add(obj)

    async def update(
        self, id: uuid.UUID | str, /, *, expected_version: int | None, **changes: Any
    ) -> User:
        """As :meth:`Repository.update`, lowercasing a changed e-mail."""
        if "email" in changes:
            changes["email"] = normalize_email(changes["email"])
        return await super().update(id, expected_version=expected_version, **changes)

    async def by_email(self, email: str) -> User | None:
        """The user with this address, matched case-insensitively."""
        stmt = self._select().where(User.email == normalize_email(email))
        return (await self.session.scalars(stmt)).one_or_none()

    async def list_by_role(
        self, role: Role | str, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
    ) -> Page[User]:
        """Users holding ``role`` (a known :class:`Role` value), ordered by name."""
        try:
            parsed = Role(role)
        except ValueError:
            raise InvalidInput("unknown role") from None
        return await self.list(
            cursor=cursor, limit=limit, sort="full_name", where=[User.role == parsed.value]
        )
