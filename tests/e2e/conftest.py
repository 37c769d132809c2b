"""The HTTP service through httpx's ASGI transport, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from redis.asyncio import Redis

from healthdb import DatabaseService
from healthdb_api.app import create_app
from healthdb_api.auth.throttle_redis import KEY_PREFIX as LOGIN_KEYS
from healthdb_api.settings import ApiSettings
from tests.conftest import REDIS_URL

PASSWORD = "correct horse battery staple 42"


#: Every test registers its clinics from one address: the registration windows are
#: exercised by tests of their own (test_registration.py), with their own limits.
ROOMY_REGISTRATION = {"register_max_per_address": 1_000_000, "register_max_per_email": 1000}


@pytest.fixture
def api_settings(migrated_url: str, tmp_path: Path) -> ApiSettings:
    return ApiSettings(
        database_url=SecretStr(migrated_url),
        jwt_secret=SecretStr("test-secret-" + "x" * 40),
        data_dir=tmp_path,
        auto_migrate=False,
        log_json=False,
        **ROOMY_REGISTRATION,  # type: ignore[arg-type]
    )


@pytest.fixture
def app(api_settings: ApiSettings) -> FastAPI:
    return create_app(api_settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c
        db: DatabaseService = app.state.db
        assert db.engines.primary.pool.checkedout() == 0, "a request leaked a connection"
        assert db.engines.critical.pool.checkedout() == 0


@dataclass
class Account:
    """A registered clinic admin, logged in."""

    user: dict[str, Any]
    clinic: dict[str, Any]
    email: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def register(client: httpx.AsyncClient, *, clinic_name: str | None = None) -> Account:
    """Register a new clinic and its admin, then log in. Registration answers alike for free
    and taken addresses, so the ids are read from the access token's claims (``/auth/me``
    would spend a unit of the clinic's request budget, which the rate-limit tests count)."""
    email = f"admin-{uuid.uuid4().hex[:10]}@clinic.example"
    name = clinic_name or f"Clinic {uuid.uuid4().hex[:6]}"
    body = {"clinic_name": name, "email": email, "password": PASSWORD, "full_name": "Ada Admin"}
    created = await client.post("/api/v1/auth/register", json=body)
    assert created.status_code == 202, created.text
    tokens = await login(client, email, PASSWORD)
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    user = {"id": claims["sub"], "clinic_id": claims["cid"], "email": email, "role": claims["role"]}
    return Account(
        user=user,
        clinic={"id": claims["cid"], "name": name},
        email=email,
        password=PASSWORD,
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
    )


async def login(client: httpx.AsyncClient, email: str, password: str) -> dict[str, Any]:
    response = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def staff(
    client: httpx.AsyncClient, admin: Account, role: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Create a staff member of ``admin``'s clinic; return (user, auth headers)."""
    email = f"{role}-{uuid.uuid4().hex[:10]}@clinic.example"
    body = {"email": email, "password": PASSWORD, "full_name": f"Sam {role}", "role": role}
    created = await client.post("/api/v1/users", json=body, headers=admin.headers)
    assert created.status_code == 201, created.text
    tokens = await login(client, email, PASSWORD)
    return created.json(), {"Authorization": f"Bearer {tokens['access_token']}"}


async def forget_login_attempts() -> None:
    """Clear the shared login throttle's windows in the test Redis: in production every
    instance shares them for 15 minutes, so one test's deliberate failures from 127.0.0.1
    would otherwise lock the next test's logins out."""
    await forget_redis_keys(LOGIN_KEYS)


async def forget_redis_keys(prefix: str) -> None:
    """Delete the test Redis's keys starting with ``prefix`` (windows of earlier tests)."""
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
