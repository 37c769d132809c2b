"""Per-clinic request budgets over HTTP: 429 + Retry-After, per clinic, overridable.

The budget here is 5 requests/minute with a burst of 2: two requests at once, then one
every 12 s. Each test runs with the per-process limiter and with Redis.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import generate_latest
from pydantic import SecretStr
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from structlog.testing import capture_logs

from healthdb import DatabaseService
from healthdb.models import Clinic
from healthdb_api.app import create_app
from healthdb_api.settings import ApiSettings
from tests.conftest import REDIS_URL
from tests.e2e.conftest import PASSWORD, Account, forget_login_attempts, login, register

PATIENTS = "/api/v1/patients"


@pytest.fixture(params=["local", "redis"])
async def app(api_settings: ApiSettings, request: pytest.FixtureRequest) -> FastAPI:
    redis_url = SecretStr(REDIS_URL) if request.param == "redis" else None
    if redis_url is not None:
        await forget_login_attempts()
    small = {"rate_limit_per_minute": 5, "rate_limit_burst": 2, "redis_url": redis_url}
    return create_app(api_settings.model_copy(update=small))


def _db(app: FastAPI) -> DatabaseService:
    db: DatabaseService = app.state.db
    return db


async def _set_override(app: FastAPI, clinic_id: str, per_minute: int | None) -> None:
    async def write(session: AsyncSession) -> None:
        stmt = (
            update(Clinic)
            .where(Clinic.id == uuid.UUID(clinic_id))
            .values(rate_limit_per_minute=per_minute)
        )
        await session.execute(stmt)

    async with _db(app).clinic(clinic_id):  # a clinic's row is written only in its scope
        await _db(app).execute_write(write)


async def _get(client: httpx.AsyncClient, account: Account) -> httpx.Response:
    return await client.get(PATIENTS, headers=account.headers)


async def test_over_budget_answers_429_with_retry_after_and_other_clinics_are_unaffected(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    busy = await register(client)
    calm = await register(client)
    assert (await _get(client, busy)).status_code == 200
    assert (await client.get("/api/v1/auth/me", headers=busy.headers)).status_code == 200
    with capture_logs() as logs:
        refused = await _get(client, busy)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] in {"11", "12"}  # 12 s minus the time spent since
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert set(error) == {"code", "message", "details"}

    # Another clinic has its own budget.
    assert (await _get(client, calm)).status_code == 200
    # Every authenticated route is charged, including the admin and auth ones ...
    for path in ("/api/v1/users", "/api/v1/admin/audit", "/api/v1/auth/me"):
        assert (await client.get(path, headers=busy.headers)).status_code == 429, path
    # ... but signing in is not (it is throttled per address elsewhere).
    await login(client, busy.email, PASSWORD)

    [event] = [e for e in logs if e["event"] == "rate_limited"]
    assert event["clinic_id"] == busy.clinic["id"]
    assert set(event) == {"event", "log_level", "clinic_id", "backend", "retry_after"}
    flat = repr(logs)
    for secret in (busy.email, busy.access_token, busy.user["id"], busy.clinic["name"]):
        assert secret not in flat

    metrics = generate_latest(_db(app).metrics.registry).decode()  # what /metrics serves
    backend = _db(app).rate_limiter.backend
    assert f'healthdb_rate_limited_total{{backend="{backend}"}} 4.0' in metrics


async def test_unauthenticated_requests_do_not_spend_the_budget(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client)
    forged = {"Authorization": "Bearer " + account.access_token[:-4] + "AAAA"}
    for _ in range(5):
        assert (await client.get(PATIENTS, headers=forged)).status_code == 401
    assert (await _get(client, account)).status_code == 200
    assert (await _get(client, account)).status_code == 200
    assert (await _get(client, account)).status_code == 429


async def test_a_clinic_override_changes_its_budget(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    slow = await register(client)
    fast = await register(client)
    await _set_override(app, slow.clinic["id"], 1)  # 1/min: a minute between requests
    await _set_override(app, fast.clinic["id"], 600_000)  # 10,000/s: never in the way here

    statuses = [(await _get(client, slow)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    refused = await _get(client, slow)
    assert refused.headers["retry-after"] in {"59", "60"}

    statuses = [(await _get(client, fast)).status_code for _ in range(20)]
    assert statuses == [200] * 20


async def test_the_budget_does_not_touch_phi_responses(client: httpx.AsyncClient) -> None:
    account = await register(client)
    body: dict[str, Any] = {
        "mrn": f"MRN-{uuid.uuid4().hex[:8]}",
        "given_name": "Ada",
        "family_name": "Lovelace",
        "date_of_birth": "1815-12-10",
        "sex": "female",
    }
    created = await client.post(PATIENTS, json=body, headers=account.headers)
    assert created.status_code == 201, created.text
    await _get(client, account)
    refused = await client.get(f"{PATIENTS}/{created.json()['id']}", headers=account.headers)
    assert refused.status_code == 429
    assert "Lovelace" not in refused.text
    assert body["mrn"] not in refused.text


#: Routes that sign in or out with credentials or a refresh token rather than an access token.
UNCHARGED = {
    "/api/v1/auth/register",
    "/api/v1/auth/login",
    "/api/v1/auth/refresh",
    "/api/v1/auth/logout",
}


#: Routes of platform operators: authenticated by an operator key, and of no clinic.
OPERATOR_ROUTES = {"/api/v1/admin/database/health", "/api/v1/admin/database/metrics-summary"}


def test_every_api_route_but_sign_in_is_authenticated_and_so_charged(tmp_path: Path) -> None:
    # The bearer scheme is only consumed by current_principal, which charges the budget.
    settings = ApiSettings(jwt_secret=SecretStr("s" * 40), data_dir=tmp_path)
    paths = create_app(settings).openapi()["paths"]
    operations = [
        (path, method, op)
        for path, item in paths.items()
        if path.startswith("/api/v1/")
        for method, op in item.items()
    ]
    assert len(operations) > 10
    for path, method, op in operations:
        security = op.get("security", [])
        if path in OPERATOR_ROUTES:
            assert security == [{"OperatorKey": []}], (method, path)
            continue
        charged = {"HTTPBearer": []} in security
        assert charged == (path not in UNCHARGED), (method, path)
