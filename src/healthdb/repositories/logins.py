"""The one read that runs before a clinic is known: which clinic an e-mail logs in to.

``user_logins`` is a tenant table behind both walls, so an unscoped ORM query on it is
refused and, on PostgreSQL, row-level security shows no row. :func:`find_login` is the
narrow way past: one exact address in, at most its one ``(user_id, clinic_id)`` out.

* PostgreSQL: ``healthdb_login_route(email)``, a ``SECURITY DEFINER`` function owned by the
  owner (migration 0008); the runtime role may EXECUTE it and cannot read the table
  unscoped, so it learns one row per address it already knows and never a list.
* SQLite has no database wall: a Core statement marked as the library's own passes the ORM
  and connection walls (which refuse every other unscoped access to the table) and does
  the same exact-match read.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb.execution_options import TRUSTED
from healthdb.models import UserLogin
from healthdb.repositories.users import normalize_email

__all__ = ["LoginRoute", "find_login"]

_ROUTE = text("SELECT user_id, clinic_id FROM healthdb_login_route(:email)")
_LOGINS = UserLogin.__table__


@dataclass(frozen=True, slots=True)
class LoginRoute:
    """Where an address logs in: its user and that user's clinic."""

    user_id: uuid.UUID
    clinic_id: uuid.UUID


async def find_login(session: AsyncSession, email: str) -> LoginRoute | None:
    """The login route of ``email`` (matched case-insensitively), or ``None``. Needs no
    clinic scope; run it in a read (``db.execute_read(lambda s: find_login(s, email))``)."""
    address = normalize_email(email)
    if session.get_bind().dialect.name == "postgresql":
        row = (await session.execute(_ROUTE, {"email": address})).first()
    else:
        stmt = select(_LOGINS.c.user_id, _LOGINS.c.clinic_id).where(_LOGINS.c.email == address)
        row = (await session.execute(stmt, execution_options=TRUSTED)).first()
    if row is None:
        return None
    return LoginRoute(user_id=uuid.UUID(str(row.user_id)), clinic_id=uuid.UUID(str(row.clinic_id)))
