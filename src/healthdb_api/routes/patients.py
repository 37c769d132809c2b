"""Patients routes (`/api/v1/patients`)."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/patients", tags=["patients"])
