"""The audit trail, public: record events in the caller's unit of work, read them back a page
at a time, verify the clinic's hash chain, and anchor its heads outside the database.

The library already audits every PHI touch by itself (see :mod:`healthdb.phi`); this module
is for the events only the application knows about: logins, token reuse, account changes,
exports. :func:`record` stamps an event with the current clinic scope (actor, role, clinic,
purpose, request id, client address) and chains it onto the clinic's trail *inside the
caller's transaction*, so the event commits or rolls back together with the write it
describes. Call it from an operation run by ``execute_write`` (or a PHI read, which runs in
a writable transaction); a read-only transaction cannot hold it.

Reads go through the isolation walls like any tenant query: under a clinic scope only that
clinic's events are visible, whatever the filters say.

A hash chain cannot show that its newest rows were deleted, nor that the database owner
rewrote rows and recomputed every later hash. :func:`take_anchor` records the head of each
of the clinic's chains as an :class:`Anchor`; keep ``anchor.to_json()`` where the database
owner cannot rewrite it (WORM storage, a ticket, a signed log) and pass
``Anchor.from_json(text)`` back to :func:`verify`, which then also checks that every anchored
head is still there with the same hash. Rows written after the newest anchor are protected
by the chain alone.

Example::

    async def op(session):
        user = await add_the_user(session)
        await audit_log.record(session, "user.create", "users", user.id)
        return user

    async with db.clinic(clinic_id, actor=admin_id, role="clinic_admin"):
        await db.execute_write(op)
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb.context import Role, require_scope
from healthdb.errors import InvalidInput
from healthdb.internal import audit, audit_verify
from healthdb.internal.audit_anchor import Anchor
from healthdb.internal.audit_verify import BadRow, VerifyResult
from healthdb.models import AuditEvent
from healthdb.repositories.pagination import (
    DEFAULT_LIMIT,
    Cursor,
    Page,
    check_limit,
    decode_cursor,
    encode_cursor,
)

__all__ = [
    "DEFAULT_LIMIT",
    "Anchor",
    "AuditFilter",
    "AuditQuery",
    "BadRow",
    "Outcome",
    "VerifyResult",
    "record",
    "take_anchor",
    "verify",
]

#: The sort field a cursor of this module names (a cursor of another listing is refused).
_SORT = "occurred_at"
#: Column widths of ``audit_events`` (models/audit.py): longer values are cut, not refused,
#: because an audit write must never fail on a too-long label.
_ACTION_MAX, _RESOURCE_MAX, _REASON_MAX = 64, 64, 500


class Outcome:
    """The ``outcome`` values the service writes (a plain string column, kept short)."""

    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


def _event(
    action: str,
    resource_type: str,
    resource_id: uuid.UUID | str | None,
    *,
    outcome: str,
    reason: str | None,
    phi_fields: Iterable[str],
    actor_id: uuid.UUID | None,
    actor_role: Role | str | None,
) -> AuditEvent:
    scope = require_scope()
    role = scope.role if actor_role is None else Role.parse(actor_role)
    return AuditEvent(
        clinic_id=scope.clinic_id,
        actor_id=scope.actor if actor_id is None else actor_id,
        actor_role=role.value,
        action=action[:_ACTION_MAX],
        resource_type=resource_type[:_RESOURCE_MAX],
        resource_id=None if resource_id is None else str(resource_id)[:_RESOURCE_MAX],
        phi_fields=sorted(set(phi_fields)),
        purpose=scope.purpose[:64],
        outcome=outcome[:16],
        request_id=scope.request_id[:64],
        client_addr=scope.client_addr,
        reason=None if reason is None else reason[:_REASON_MAX],
    )


async def record(
    session: AsyncSession,
    action: str,
    resource_type: str,
    resource_id: uuid.UUID | str | None = None,
    *,
    outcome: str = Outcome.SUCCESS,
    reason: str | None = None,
    phi_fields: Iterable[str] = (),
    actor_id: uuid.UUID | None = None,
    actor_role: Role | str | None = None,
) -> AuditEvent:
    """Append one event to the current clinic's chain, in ``session``'s transaction.

    Who, where and why come from the clinic scope; ``actor_id`` / ``actor_role`` override
    the scope's for events whose actor is not the scope's (a login attempt names the account
    it claims). Raises :class:`~healthdb.ClinicContextRequired` outside a scope.
    """
    event = _event(
        action,
        resource_type,
        resource_id,
        outcome=outcome,
        reason=reason,
        phi_fields=phi_fields,
        actor_id=actor_id,
        actor_role=actor_role,
    )
    return await audit.append(session, event)


async def verify(session: AsyncSession, *, anchor: Anchor | None = None) -> VerifyResult:
    """Verify the current clinic's chain (read-only; needs a clinic scope).

    Returns ``ok``, how many rows were ``checked`` and, when broken, the ``first_bad`` row
    with the reason (edited, deleted, inserted or reordered). With ``anchor`` (only its
    entries for this clinic count), the anchored heads must still be in the chain with the
    same hash: that catches deleted newest rows and a chain rewritten with recomputed hashes.
    """
    scope = require_scope()
    return await audit_verify.verify(session, scope.clinic_id, anchor)


async def take_anchor(session: AsyncSession) -> Anchor:
    """The head (newest ``seq`` and its ``row_hash``) of each of the current clinic's
    chains (read-only; needs a clinic scope). Store ``anchor.to_json()`` outside the
    database; the owner's ``healthdb audit anchor`` anchors every clinic at once."""
    require_scope()
    return await audit_verify.take_anchor(session)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What to list; every given criterion must match. ``since`` is inclusive, ``until``
    exclusive; both must be timezone-aware."""

    resource_type: str | None = None
    resource_id: str | None = None
    actor_id: uuid.UUID | None = None
    action: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def criteria(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.resource_type is not None:
            where.append(AuditEvent.resource_type == self.resource_type)
        if self.resource_id is not None:
            where.append(AuditEvent.resource_id == self.resource_id)
        if self.actor_id is not None:
            where.append(AuditEvent.actor_id == self.actor_id)
        if self.action is not None:
            where.append(AuditEvent.action == self.action)
        for bound in (self.since, self.until):
            if bound is not None and bound.tzinfo is None:
                raise InvalidInput("audit time bounds must be timezone-aware")
        if self.since is not None:
            where.append(AuditEvent.occurred_at >= self.since)
        if self.until is not None:
            where.append(AuditEvent.occurred_at < self.until)
        return where


class AuditQuery:
    """Read the clinic's audit events, keyset-paginated on ``(occurred_at, id)``.

    A clinic's trail is several chains (lanes), so ``seq`` orders only within a lane; time,
    with the id as tie-breaker, is a complete sort key across lanes: pages never skip or
    repeat a row. Rows without a ``seq`` exist only if someone bypassed the chain;
    :func:`verify` reports them, this listing leaves them out.
    """

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def page(
        self,
        where: AuditFilter | None = None,
        *,
        cursor: str | None = None,
        limit: int = DEFAULT_LIMIT,
        descending: bool = True,
    ) -> Page[AuditEvent]:
        """One page of events matching ``where``, newest first unless ``descending=False``.

        Pass ``next_cursor`` back with the same direction for the next page; a cursor of
        the other direction (or a mangled one) raises :class:`~healthdb.InvalidInput`.
        """
        require_scope()
        limit = check_limit(limit)
        criteria = (where or AuditFilter()).criteria()
        stmt = select(AuditEvent).where(AuditEvent.seq.is_not(None), *criteria)
        at, ident = AuditEvent.occurred_at, AuditEvent.id
        if cursor is not None:
            position = decode_cursor(
                cursor, sort=_SORT, descending=descending, key_type=dt.datetime
            )
            key = position.key
            if not isinstance(key, dt.datetime):  # decode_cursor checked the type already
                raise InvalidInput("invalid cursor")
            if descending:
                after = or_(at < key, and_(at == key, ident < position.id))
            else:
                after = or_(at > key, and_(at == key, ident > position.id))
            stmt = stmt.where(after)
        order = (at.desc(), ident.desc()) if descending else (at.asc(), ident.asc())
        # One extra row tells whether another page exists, without a COUNT.
        rows = list((await self.session.scalars(stmt.order_by(*order).limit(limit + 1))).all())
        if len(rows) <= limit:
            return Page(items=rows, next_cursor=None)
        rows = rows[:limit]
        last = rows[-1]
        token = encode_cursor(Cursor(_SORT, descending, last.occurred_at, last.id))
        return Page(items=rows, next_cursor=token)
