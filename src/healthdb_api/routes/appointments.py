"""Appointments routes (``/api/v1/appointments``).

Every staff role may book, list and cancel appointments of its own clinic.

Booking cannot double-book a clinician: the booking command
(:mod:`healthdb.repositories.appointment_commands`) first locks the clinician's user row
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises writers
anyway), so concurrent bookings of one clinician queue behind each other and each sees the
previous one's committed appointment before it checks for overlaps. An overlap answers 409
``slot_taken``.

A ``patient_id`` or ``clinician_id`` that does not name a usable row of the caller's clinic
is a bad *reference in the body*, not a missing resource: 422 (``unknown_patient`` /
``invalid_clinician``), identical whether the row is missing or belongs to another clinic.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import ConflictError, NotFound, QueryOptions
from healthdb.models import Appointment
from healthdb.repositories import (
    MAX_LIMIT,
    AppointmentRepository,
    appointment_commands,
    appointment_views,
)
from healthdb.repositories.pagination import DEFAULT_LIMIT, MAX_CURSOR_LENGTH, Page
from healthdb_api.deps import CurrentPrincipal, Db, scope
from healthdb_api.errors import ApiError
from healthdb_api.fields import Instant
from healthdb_api.routes.patients import etag, parse_if_match
from healthdb_api.schemas import AppointmentCreate, AppointmentOut, AppointmentPage

router = APIRouter(prefix="/api/v1/appointments", tags=["appointments"])

PURPOSE = "scheduling"

IfMatch = Annotated[
    str | None,
    Header(max_length=64, description="optional: the appointment's current version (ETag)"),
]


def not_found() -> ApiError:
    return ApiError(404, "not_found", "appointment not found")


def _invalid(code: str, field: str, message: str) -> ApiError:
    return ApiError(
        422, code, message, details=[{"loc": ["body", field], "msg": message, "type": code}]
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AppointmentOut,
    responses={409: {"description": "slot_taken: the clinician is already booked"}},
)
async def book_appointment(
    body: AppointmentCreate, principal: CurrentPrincipal, db: Db, response: Response
) -> AppointmentOut:
    booking = appointment_commands.book(**body.model_dump())
    async with scope(db, principal, purpose=PURPOSE):
        try:
            appointment = await db.execute_write(booking, QueryOptions.for_phi(booking.name))
        except appointment_commands.InvalidClinician as exc:
            raise _invalid(exc.code, "clinician_id", str(exc)) from None
        except appointment_commands.UnknownPatient as exc:
            raise _invalid(exc.code, "patient_id", str(exc)) from None
        except appointment_commands.SlotTaken as exc:
            raise ApiError(409, exc.code, str(exc)) from None
    response.headers["ETag"] = etag(appointment.version)
    response.headers["Location"] = f"{router.prefix}/{appointment.id}"
    return AppointmentOut.model_validate(appointment)


@router.get("", response_model=AppointmentPage)
async def list_appointments(
    principal: CurrentPrincipal,
    db: Db,
    patient_id: uuid.UUID | None = None,
    clinician_id: uuid.UUID | None = None,
    start: Annotated[
        Instant | None, Query(description="only appointments ending after this")
    ] = None,
    end: Annotated[
        Instant | None, Query(description="only appointments starting before this")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_LENGTH)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> AppointmentPage:
    """Appointments (any status) earliest first, optionally of one patient and/or clinician
    and intersecting the window ``[start, end)``."""
    if start is not None and end is not None and end <= start:
        raise ApiError(
            422,
            "validation_error",
            "end must be after start",
            details=[{"loc": ["query", "end"], "msg": "must be after start", "type": "window"}],
        )
    where: list[ColumnElement[bool]] = []
    if patient_id is not None:
        where.append(Appointment.patient_id == patient_id)
    if clinician_id is not None:
        where.append(Appointment.clinician_id == clinician_id)
    if start is not None:
        where.append(Appointment.end_at > start)
    if end is not None:
        where.append(Appointment.start_at < end)

    async def op(session: AsyncSession) -> Page[Appointment]:
        return await AppointmentRepository(session).list(
            cursor=cursor, limit=limit, sort="start_at", where=where
        )

    async with scope(db, principal, purpose=PURPOSE):
        page = await db.execute_read(op, QueryOptions.for_phi("appointments.list"))
    return AppointmentPage(
        items=[AppointmentOut.model_validate(a) for a in page.items],
        next_cursor=page.next_cursor,
    )


@router.get("/{appointment_id}", response_model=AppointmentOut, responses={404: {}})
async def get_appointment(
    appointment_id: uuid.UUID, principal: CurrentPrincipal, db: Db, response: Response
) -> AppointmentOut:
    async with scope(db, principal, purpose=PURPOSE):
        appointment = await db.execute_read(
            appointment_views.by_id(appointment_id), QueryOptions.for_phi("appointments.get")
        )
    if appointment is None:
        raise not_found()
    response.headers["ETag"] = etag(appointment.version)
    return AppointmentOut.model_validate(appointment)


@router.post(
    "/{appointment_id}/cancel", response_model=AppointmentOut, responses={404: {}, 409: {}}
)
async def cancel_appointment(
    appointment_id: uuid.UUID,
    principal: CurrentPrincipal,
    db: Db,
    response: Response,
    if_match: IfMatch = None,
) -> AppointmentOut:
    """Cancel (idempotent: cancelling a cancelled appointment returns it unchanged)."""
    expected = parse_if_match(if_match)

    async def op(session: AsyncSession) -> Appointment:
        return await AppointmentRepository(session).cancel(appointment_id, expected)

    async with scope(db, principal, purpose=PURPOSE):
        try:
            appointment = await db.execute_write(op, QueryOptions.for_phi("appointments.cancel"))
        except NotFound:
            raise not_found() from None
        except ConflictError:
            raise ApiError(
                409,
                "version_conflict",
                "the appointment was modified by someone else; reload it and retry",
            ) from None
    response.headers["ETag"] = etag(appointment.version)
    return AppointmentOut.model_validate(appointment)
