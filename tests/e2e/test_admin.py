"""Health, metrics, admin database endpoints, docs, body size limit and error shapes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import SecretStr

from healthdb_api.app import create_app
from healthdb_api.operators import create_operator, list_operators, revoke_operator
from healthdb_api.settings import ApiSettings
from tests.e2e.conftest import register, staff

ADMIN = "/api/v1/admin/database"
ADMIN_ENDPOINTS = [f"{ADMIN}/health", f"{ADMIN}/metrics-summary"]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    return body


# -- health and metrics -----------------------------------------------------------------------


async def test_live(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] is True
    assert body["migrated"] is True


@pytest.fixture
def owner_settings(
    api_settings: ApiSettings, migrated_url: str, request: pytest.FixtureRequest
) -> ApiSettings:
    """The service's settings with the owner as admin URL, as the CLI runs."""
    owner = migrated_url
    if migrated_url.startswith("postgresql"):
        owner = str(request.getfixturevalue("pg_admin_migrated_url"))
    return api_settings.model_copy(update={"admin_database_url": SecretStr(owner)})


@pytest.fixture
async def operator(owner_settings: ApiSettings) -> dict[str, str]:
    """Auth headers of a new platform operator, created as ``healthdb operator create``."""
    name = f"ops-{uuid.uuid4().hex[:8]}"
    key = await create_operator(owner_settings, name)
    return {"Authorization": f"Bearer {key}", "X-Operator": name}


async def test_metrics_is_prometheus_text_for_operators(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    await register(client)  # some database operations to measure
    response = await client.get("/metrics", headers=operator)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE healthdb_operation_seconds histogram" in text
    assert "healthdb_operation_seconds_count{" in text
    assert "healthdb_pool_checked_out" in text


# -- operational figures: platform operators only ---------------------------------------------

OPERATOR_ENDPOINTS = [*ADMIN_ENDPOINTS, "/metrics"]


@pytest.mark.parametrize("path", OPERATOR_ENDPOINTS)
async def test_operational_figures_need_an_operator_key(
    client: httpx.AsyncClient, path: str
) -> None:
    assert_error(await client.get(path), 401, "unauthorized")
    for token in ("not-a-token", "hdbop_" + "x" * 43):
        bogus = await client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert_error(bogus, 401, "unauthorized")


@pytest.mark.parametrize("path", OPERATOR_ENDPOINTS)
@pytest.mark.parametrize("role", ["clinic_admin", "doctor"])
async def test_no_clinic_user_sees_figures_that_span_every_clinic(
    client: httpx.AsyncClient, path: str, role: str
) -> None:
    """A clinic admin sees no figure at all: pools, latencies and counters describe every
    clinic's activity combined."""
    admin = await register(client)
    headers = admin.headers if role == "clinic_admin" else (await staff(client, admin, role))[1]
    assert_error(await client.get(path, headers=headers), 403, "forbidden")


async def test_an_operator_sees_database_health(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    response = await client.get(f"{ADMIN}/health", headers=operator)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is True
    assert body["dialect"] in {"sqlite", "postgresql"}
    assert body["latency_ms"] >= 0
    assert body["error"] is None
    assert set(body["pools"]) == {"primary", "critical"}
    assert set(body["pools"]["primary"]) == {"size", "checked_out", "overflow"}


async def test_an_operator_sees_the_metrics_summary(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    await register(client)
    response = await client.get(f"{ADMIN}/metrics-summary", headers=operator)
    assert response.status_code == 200, response.text
    body = response.json()
    assert {"pools", "latency", "cache"} <= set(body)
    assert set(body["pools"]) == {"primary", "critical"}
    assert body["latency"], "registering and logging in ran measured operations"
    for summary in body["latency"].values():
        assert summary["count"] >= 1
    assert {"entries", "hit_ratio"} <= set(body["cache"])
    assert isinstance(body["slow_statements"], list)


async def test_an_operator_reads_no_clinic_rows_and_a_revoked_key_is_refused(
    client: httpx.AsyncClient, operator: dict[str, str], owner_settings: ApiSettings
) -> None:
    await register(client)
    # An operator is nobody in any clinic: every clinic route refuses the key.
    for path in ("/api/v1/patients", "/api/v1/users", "/api/v1/admin/audit", "/api/v1/auth/me"):
        assert_error(await client.get(path, headers=operator), 401, "unauthorized")
    assert (operator["X-Operator"], True) in await list_operators(owner_settings)
    assert await revoke_operator(owner_settings, operator["X-Operator"])
    assert_error(await client.get("/metrics", headers=operator), 401, "unauthorized")
    assert not await revoke_operator(owner_settings, operator["X-Operator"])


# -- docs and error shapes --------------------------------------------------------------------


async def test_docs(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    schema = await client.get("/openapi.json")
    assert schema.status_code == 200
    assert f"{ADMIN}/health" in schema.json()["paths"]


async def test_unknown_route_is_404_error_shape(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/api/v1/no-such-thing"), 404, "not_found")


async def test_oversized_body_is_413(client: httpx.AsyncClient, api_settings: ApiSettings) -> None:
    too_big = b"x" * (api_settings.max_body_bytes + 1)
    response = await client.post(
        "/api/v1/auth/login", content=too_big, headers={"Content-Type": "application/json"}
    )
    body = assert_error(response, 413, "payload_too_large")
    assert body["error"]["details"] == {"max_bytes": api_settings.max_body_bytes}
    assert response.headers.get("X-Request-ID")


async def test_streamed_oversized_body_is_413(
    client: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for _ in range(api_settings.max_body_bytes // 65536 + 2):
            yield b"x" * 65536

    response = await client.post(
        "/api/v1/auth/login", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")


def _probe_app(settings: ApiSettings, calls: list[int]) -> FastAPI:
    """A fresh app with a throwaway route that records the bodies it receives."""
    app = create_app(settings)

    @app.post("/probe")
    async def probe(request: Request) -> dict[str, int]:
        size = len(await request.body())
        calls.append(size)
        return {"size": size}

    return app


async def test_body_limit_stops_requests_before_the_route(api_settings: ApiSettings) -> None:
    calls: list[int] = []
    limit = api_settings.max_body_bytes
    transport = httpx.ASGITransport(app=_probe_app(api_settings, calls))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        ok = await c.post("/probe", content=b"y" * limit)
        assert ok.status_code == 200
        assert ok.json() == {"size": limit}  # a body at the limit arrives intact

        async def stream() -> AsyncIterator[bytes]:
            yield b"a" * 1000
            yield b"b" * 2000

        streamed = await c.post("/probe", content=stream())
        assert streamed.json() == {"size": 3000}
        assert calls == [limit, 3000]

        assert_error(await c.post("/probe", content=b"y" * (limit + 1)), 413, "payload_too_large")

        async def big() -> AsyncIterator[bytes]:
            yield b"a" * limit
            yield b"b"

        assert_error(await c.post("/probe", content=big()), 413, "payload_too_large")
        assert calls == [limit, 3000], "an oversized body reached the route"


async def test_unexpected_errors_never_leak(api_settings: ApiSettings) -> None:
    app = create_app(api_settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("SECRET-CANARY")

    async with app.router.lifespan_context(app):
        # The server-error middleware re-raises after answering; look only at the answer.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            response = await c.get("/boom")
    body = assert_error(response, 500, "internal_error")
    assert body["error"]["details"] is None
    for secret in ("SECRET-CANARY", "RuntimeError", "Traceback", "boom"):
        assert secret not in response.text
