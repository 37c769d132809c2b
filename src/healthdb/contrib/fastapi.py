"""Reusable FastAPI pieces: the lifespan that owns a DatabaseService, the dependency that
hands it to routes, and the admin router (the plan's DatabaseController)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from healthdb.errors import HealthdbError
from healthdb.migrate import is_at_head
from healthdb.service import DatabaseService
from healthdb.settings import Settings


def database_lifespan(
    settings: Settings, *, before_connect: Callable[[], Awaitable[None]] | None = None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan that connects on start-up, stores the service on ``app.state.db`` and
    drains and closes it on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if before_connect is not None:
            await before_connect()
        try:
            db = await DatabaseService.connect(settings)
        except HealthdbError as exc:
            # Kept for the CLI, which reports it in one line after the server gives up.
            app.state.startup_error = exc
            raise
        async with db:
            app.state.db = db
            yield

    return lifespan


async def get_db(request: Request) -> DatabaseService:
    """Dependency: the application's DatabaseService (``async``: FastAPI runs a plain
    ``def`` dependency in a worker thread)."""
    db: DatabaseService = request.app.state.db
    return db


Db = Annotated[DatabaseService, Depends(get_db)]


def health_router() -> APIRouter:
    """``/health/live`` (the process answers) and ``/health/ready`` (database reachable and
    migrated to head)."""
    router = APIRouter(tags=["health"])

    @router.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/health/ready")
    async def ready(db: Db) -> JSONResponse:
        report = await db.health()
        migrated = report.ok and await _at_head(db)
        ok = report.ok and migrated
        body = {
            "status": "ok" if ok else "unavailable",
            "database": report.ok,
            "migrated": migrated,
        }
        return JSONResponse(
            body, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"}
        )

    return router


async def _at_head(db: DatabaseService) -> bool:
    try:
        return await is_at_head(db.engines.primary)
    except Exception:  # readiness must answer, not raise
        return False


def admin_router(*, require_admin: Callable[..., Any]) -> APIRouter:
    """``/api/v1/admin/database/{health,metrics-summary}`` behind ``require_admin``.

    These figures describe every clinic at once (pools, latencies, slow statements): guard
    them with a dependency that admits only whoever runs the service, never a clinic's own
    admin, or one clinic sees the others' activity."""
    router = APIRouter(
        prefix="/api/v1/admin/database", tags=["admin"], dependencies=[Depends(require_admin)]
    )

    @router.get("/health")
    async def database_health(db: Db) -> dict[str, Any]:
        return asdict(await db.health())

    @router.get("/metrics-summary")
    async def metrics_summary(db: Db) -> dict[str, Any]:
        summary = db.metrics_summary()
        return {
            "pools": {name: asdict(p) for name, p in summary["pools"].items()},
            "latency": {name: asdict(s) for name, s in summary["latency"].items()},
            "cache": summary["cache"],
            "slow_statements": [asdict(s) for s in summary["slow_statements"]],
        }

    return router


def metrics_router(*, require: Callable[..., Any] | None = None) -> APIRouter:
    """``/metrics`` in Prometheus text format (labels carry no data values), behind
    ``require`` when given (the counters cover every clinic at once)."""
    router = APIRouter(tags=["metrics"], dependencies=[] if require is None else [Depends(require)])

    @router.get("/metrics", include_in_schema=False)
    async def metrics(db: Db) -> Response:
        await db.health()  # refresh pool gauges
        return Response(generate_latest(db.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
