"""Auth events in the clinic's audit chain (:mod:`healthdb.audit_log`).

What is recorded, and in which transaction:

* ``auth.login``: in the transaction that starts the session (the refresh token insert);
  the actor is the user, with their role.
* ``auth.login_failed`` (outcome ``failure``): a known account with a wrong password, an
  inactive account or an inactive clinic, in a write of its own (there is no auth write to
  share). The actor is the account the attempt *claimed*, so an admin filtering by that
  user sees the attempts against it; ``reason`` says which check failed.
* ``clinic.create``, ``user.create``, ``user.update`` (and ``.delete``): recorded by the
  library itself for every write to ``clinics`` and ``users``, in the transaction that
  makes it, naming the fields written in ``reason`` (never their values), so
  registration, the users routes, login's password rehash and the CLI all record them.
* ``user.role_change``: in the transaction that changes the role (the users routes), with
  ``"<old> -> <new>"``; ``user.create`` with outcome ``denied`` when the users routes refuse
  an address that is taken.
* ``auth.refresh_reuse`` (outcome ``denied``): in the transaction that revokes the token
  family (:func:`healthdb_api.auth.sessions.rotate`), the actor being the token's owner.

An unknown e-mail belongs to no clinic and so to no chain: it is logged as a
``login_failed_unknown_account`` security event (request id and client address, never the
address typed). Throttled attempts (429) check no credential and are not audited.
"""

from __future__ import annotations

import uuid

import structlog
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import DatabaseService, QueryOptions, audit_log
from healthdb.models import User

__all__ = ["client_addr", "login_failed", "request_id", "unknown_account"]

log = structlog.get_logger("healthdb_api.auth")


def request_id(request: Request) -> str:
    """The request's id (set by the app's middleware), or a fresh one."""
    rid = getattr(request.state, "request_id", None)
    return rid if isinstance(rid, str) else uuid.uuid4().hex


def client_addr(request: Request) -> str | None:
    return request.client.host if request.client else None


def unknown_account(rid: str, addr: str | None) -> None:
    """A login for an e-mail no account uses: no clinic, so a log event, not an audit row."""
    log.warning("login_failed_unknown_account", request_id=rid, client_addr=addr)


async def login_failed(
    db: DatabaseService, user_id: uuid.UUID, user: User | None, why: str
) -> None:
    """Audit a failed login of a known account (inside its clinic's scope)."""

    async def op(session: AsyncSession) -> None:
        await audit_log.record(
            session,
            "auth.login_failed",
            "users",
            user_id,
            outcome=audit_log.Outcome.FAILURE,
            reason=why,
            actor_role=None if user is None else user.role,
        )

    log.info("login_failed", user_id=str(user_id))
    await db.execute_write(op, QueryOptions.for_write("auth.login_failed"))
