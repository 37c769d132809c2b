"""The floor for bench/http_path.py: a bare FastAPI + asyncpg app on the same tables.

No authentication, no row-level security (it connects as the database owner, a superuser),
no audit, no masking, no decryption: each endpoint is the least a service must do to answer
the same request. Started by ``bench/http_path.py`` as::

    BARE_DSN=postgresql://... python -m uvicorn bare_app:app --app-dir bench --port N
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, Header, HTTPException, Request
from pydantic import BaseModel

_COLUMNS = (
    "id, mrn, given_name, family_name, date_of_birth, sex, phone, email, address, ssn, "
    "notes, version, created_at, updated_at"
)
_APPOINTMENT_COLUMNS = (
    "id, patient_id, clinician_id, start_at, end_at, reason, status, version, created_at, "
    "updated_at"
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(
        os.environ["BARE_DSN"], min_size=10, max_size=int(os.environ.get("BARE_POOL", "10"))
    )
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/patients/{patient_id}")
async def get_patient(patient_id: uuid.UUID, request: Request) -> dict[str, Any]:
    row = await _pool(request).fetchrow(
        f"SELECT {_COLUMNS} FROM patients WHERE id = $1",
        patient_id,
    )
    if row is None:
        raise HTTPException(404)
    return dict(row)


@app.get("/patients")
async def list_patients(request: Request, clinic_id: uuid.UUID, limit: int = 50) -> dict[str, Any]:
    rows = await _pool(request).fetch(
        f"SELECT {_COLUMNS} FROM patients WHERE clinic_id = $1 AND deleted_at IS NULL "
        "ORDER BY family_name, id LIMIT $2",
        clinic_id,
        limit,
    )
    return {"items": [dict(r) for r in rows], "next_cursor": None}


class PhoneChange(BaseModel):
    phone: str


@app.patch("/patients/{patient_id}")
async def update_patient(
    patient_id: uuid.UUID,
    body: PhoneChange,
    request: Request,
    if_match: str = Header(),
) -> dict[str, Any]:
    row = await _pool(request).fetchrow(
        "UPDATE patients SET phone = $1, version = version + 1, updated_at = now() "
        f"WHERE id = $2 AND version = $3 RETURNING {_COLUMNS}",
        body.phone,
        patient_id,
        int(if_match.strip('"')),
    )
    if row is None:
        raise HTTPException(409)
    return dict(row)


class AppointmentIn(BaseModel):
    patient_id: uuid.UUID
    clinician_id: uuid.UUID
    start_at: dt.datetime
    end_at: dt.datetime
    reason: str | None = None


@app.post("/appointments", status_code=201)
async def create_appointment(body: AppointmentIn, request: Request) -> dict[str, Any]:
    row = await _pool(request).fetchrow(
        "INSERT INTO appointments (id, clinic_id, patient_id, clinician_id, start_at, end_at, "
        "status, reason, version, created_at, updated_at) "
        "SELECT $1, p.clinic_id, $2, $3, $4, $5, 'booked', $6, 1, now(), now() "
        f"FROM patients p WHERE p.id = $2 RETURNING {_APPOINTMENT_COLUMNS}",
        uuid.uuid4(),
        body.patient_id,
        body.clinician_id,
        body.start_at,
        body.end_at,
        body.reason,
    )
    if row is None:
        raise HTTPException(404)
    return dict(row)
