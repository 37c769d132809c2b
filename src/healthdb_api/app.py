"""The application factory: the one place the service is assembled."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from redis.asyncio import Redis

from healthdb import Role
from healthdb.contrib.fastapi import admin_router, database_lifespan, health_router, metrics_router
from healthdb.migrate import upgrade
from healthdb_api import errors
from healthdb_api.auth import routes as auth_routes
from healthdb_api.auth.throttle_redis import RedisLoginThrottle
from healthdb_api.auth.tokens import TokenConfig
from healthdb_api.deps import require_roles
from healthdb_api.limits import BodySizeLimit
from healthdb_api.routes import appointments, audit, patients, users
from healthdb_api.settings import ApiSettings
from healthdb_api.suspicious import SuspiciousInputMonitor


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """Build the FastAPI app; nothing connects until the lifespan starts."""
    settings = settings or ApiSettings()

    async def migrate_embedded() -> None:
        if settings.auto_migrate and not settings.is_postgres:
            await upgrade(settings.admin_url)

    database = database_lifespan(settings, before_connect=migrate_embedded)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with database(app):
            throttle = _login_throttle(settings)
            if throttle is not None:
                app.state.login_throttle = throttle
            try:
                yield
            finally:
                if throttle is not None:
                    await throttle.close()

    app = FastAPI(title="healthdb reference service", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.token_config = TokenConfig(
        secret=settings.resolved_jwt_secret(),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        access_ttl=settings.access_token_ttl,
    )
    errors.install(app)
    # Inside the size limit (added first = innermost): it scans bodies already bounded.
    app.add_middleware(SuspiciousInputMonitor)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.middleware("http")(_request_id)
    app.include_router(health_router())
    app.include_router(metrics_router())
    app.include_router(admin_router(require_admin=require_roles(Role.CLINIC_ADMIN)))
    app.include_router(auth_routes.router)
    app.include_router(users.router)
    app.include_router(patients.router)
    app.include_router(appointments.router)
    app.include_router(audit.router)
    return app


def _login_throttle(settings: ApiSettings) -> RedisLoginThrottle | None:
    """With Redis configured, one login throttle for every instance (in-process fallback
    while Redis is unreachable); without, the routes create an in-process one."""
    if settings.redis_url is None:
        return None
    client = Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
    )
    return RedisLoginThrottle(
        client, fallback=auth_routes.memory_throttle(settings), timeout=settings.redis_timeout
    )


async def _request_id(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    request.state.request_id = uuid.uuid4().hex
    response = await call_next(request)
    response.headers["X-Request-ID"] = request.state.request_id
    return response
