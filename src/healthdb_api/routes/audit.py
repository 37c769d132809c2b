"""Audit trail routes (``/api/v1/admin/audit``): a clinic admin reads and verifies the
audit chain of their own clinic.

``GET /api/v1/admin/audit`` lists events newest first (``order=asc`` for oldest first),
keyset-paginated on ``(occurred_at, id)`` (a clinic's trail is several chain lanes, so
``seq`` orders only within a lane): pass ``next_cursor`` back, with the same ``order``, for
the next page. Filters combine with AND:

* ``patient_id``: events about that patient (``resource_type`` ``patients`` and that id;
  events about the patient's appointments carry the appointment's id instead);
* ``actor_id``, ``action`` (exact, e.g. ``phi.read_masked``);
* ``from`` (inclusive) / ``to`` (exclusive): timestamps with a UTC offset.

``POST /api/v1/admin/audit/verify`` walks the clinic's whole chain and answers ``ok``, how
many rows were ``checked`` and, when broken, the first bad row's ``lane``, ``seq`` and
``reason``. ``GET /api/v1/admin/audit/anchor`` returns the heads of the clinic's chains; a
clinic that keeps it and posts it back as the body of ``/verify`` learns whether any row up
to those heads was since deleted or rewritten, including by whoever runs the database.

Both run inside the admin's clinic scope, so another clinic's events are never visible or
verified, whatever the parameters. Reading the trail is not itself audited: the trail holds
no PHI, only who touched which record when.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import QueryOptions, Role, audit_log
from healthdb.repositories import DEFAULT_LIMIT, MAX_LIMIT, Page
from healthdb.repositories.pagination import MAX_CURSOR_LENGTH
from healthdb_api.deps import Db, Principal, require_roles, scope
from healthdb_api.errors import ApiError
from healthdb_api.fields import Instant, SingleLine

router = APIRouter(prefix="/api/v1/admin/audit", tags=["audit"])

Admin = Annotated[Principal, Depends(require_roles(Role.CLINIC_ADMIN))]
PURPOSE = "audit_review"
#: Longest ``action`` filter (the column width).
MAX_ACTION = 64


class AuditEventOut(BaseModel):
    """One audit event, as stored (``row_hash`` seals the row, ``prev_hash`` links it)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    lane: int
    seq: int
    occurred_at: dt.datetime
    clinic_id: uuid.UUID
    actor_id: uuid.UUID | None
    actor_role: str | None
    action: str
    resource_type: str
    resource_id: str | None
    phi_fields: list[str]
    purpose: str | None
    outcome: str
    request_id: str | None
    client_addr: str | None
    reason: str | None
    prev_hash: str | None
    row_hash: str | None


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None


class BadRowOut(BaseModel):
    """Where the chain breaks: ``seq`` is ``null`` for a row inserted without one."""

    lane: int
    seq: int | None
    reason: str


class VerifyOut(BaseModel):
    ok: bool
    checked: int
    first_bad: BadRowOut | None


@router.get("", response_model=AuditPage, responses={403: {}, 422: {}})
async def list_audit_events(
    admin: Admin,
    db: Db,
    patient_id: Annotated[uuid.UUID | None, Query()] = None,
    actor_id: Annotated[uuid.UUID | None, Query()] = None,
    action: Annotated[str | None, Query(min_length=1, max_length=MAX_ACTION), SingleLine] = None,
    since: Annotated[
        Instant | None, Query(alias="from", description="inclusive; with a UTC offset")
    ] = None,
    until: Annotated[
        Instant | None, Query(alias="to", description="exclusive; with a UTC offset")
    ] = None,
    order: Annotated[Literal["desc", "asc"], Query()] = "desc",
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_LENGTH)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> AuditPage:
    """The clinic's audit events matching every filter, one page at a time."""
    if since is not None and until is not None and until <= since:
        raise ApiError(
            422,
            "validation_error",
            "'to' must be later than 'from'",
            details=[{"loc": ["query", "to"], "msg": "must be after from", "type": "range"}],
        )
    where = audit_log.AuditFilter(
        resource_type=None if patient_id is None else "patients",
        resource_id=None if patient_id is None else str(patient_id),
        actor_id=actor_id,
        action=action,
        since=since,
        until=until,
    )

    async def op(session: AsyncSession) -> Page[AuditEventOut]:
        page = await audit_log.AuditQuery(session).page(
            where, cursor=cursor, limit=limit, descending=order == "desc"
        )
        # Converted inside the unit: the rows are plain values once the session closes.
        items = [AuditEventOut.model_validate(event) for event in page.items]
        return Page(items=items, next_cursor=page.next_cursor)

    async with scope(db, admin, purpose=PURPOSE):
        page = await db.execute_read(op, QueryOptions.for_read("audit.list"))
    return AuditPage(items=page.items, next_cursor=page.next_cursor)


@router.get("/anchor", responses={403: {}})
async def anchor_audit_chain(admin: Admin, db: Db) -> Response:
    """The head of each of the clinic's chain lanes, as an anchor document to keep outside
    the service (``healthdb-audit-anchor/1``). Posting it back to ``/verify`` later proves
    that no row up to those heads was deleted or rewritten since, even by the operator."""

    async def op(session: AsyncSession) -> audit_log.Anchor:
        return await audit_log.take_anchor(session)

    async with scope(db, admin, purpose=PURPOSE):
        anchor = await db.execute_read(op, QueryOptions.for_read("audit.anchor"))
    return Response(anchor.to_json(), media_type="application/json")


@router.post("/verify", response_model=VerifyOut, responses={403: {}})
async def verify_audit_chain(
    admin: Admin,
    db: Db,
    anchor: Annotated[
        dict[str, Any] | None,
        Body(description="optional: an anchor document from GET /anchor of this clinic"),
    ] = None,
) -> VerifyOut:
    """Verify the clinic's audit hash chain from its first row to its last; with an anchor,
    also that every anchored head is still there with the same hash."""
    parsed = None if anchor is None else _own_anchor(anchor, admin.clinic_id)

    async def op(session: AsyncSession) -> audit_log.VerifyResult:
        return await audit_log.verify(session, anchor=parsed)

    async with scope(db, admin, purpose=PURPOSE):
        result = await db.execute_read(op, QueryOptions.for_read("audit.verify"))
    bad = result.first_bad
    return VerifyOut(
        ok=result.ok,
        checked=result.checked,
        first_bad=None if bad is None else BadRowOut(lane=bad.lane, seq=bad.seq, reason=bad.reason),
    )


def _own_anchor(document: dict[str, Any], clinic_id: uuid.UUID) -> audit_log.Anchor:
    """The anchor, parsed (422 naming the problem if it is not one), and only of this
    clinic: heads of other clinics would be silently unchecked, an anchor that proves
    nothing."""
    parsed = audit_log.Anchor.from_json(json.dumps(document))
    if any(clinic != clinic_id for clinic, _ in parsed.heads):
        raise ApiError(
            422,
            "validation_error",
            "the anchor holds heads of another clinic; take this clinic's with GET /anchor",
            details=[{"loc": ["body", "heads"], "msg": "another clinic", "type": "clinic"}],
        )
    return parsed
