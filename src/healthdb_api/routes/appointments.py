"""Appointments routes (`/api/v1/appointments`)."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/appointments", tags=["appointments"])
