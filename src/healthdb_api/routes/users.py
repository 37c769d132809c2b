"""Users routes (`/api/v1/users`)."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/users", tags=["users"])
