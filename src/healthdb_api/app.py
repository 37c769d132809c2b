"""The application factory: the one place the service is assembled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from healthdb import DatabaseService, HealthdbError
from healthdb.contrib.fastapi import admin_router, database_lifespan, health_router, metrics_router
from healthdb.migrate import upgrade
from healthdb_api import errors
from healthdb_api.access import AccessLog, configure_access_log
from healthdb_api.auth import registration
from healthdb_api.auth import routes as auth_routes
from healthdb_api.auth.throttle_redis import RedisLoginThrottle
from healthdb_api.auth.tokens import TokenConfig, VerifiedTokens
from healthdb_api.fhir import api as fhir
from healthdb_api.limits import BodyLimit
from healthdb_api.operators import require_operator
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
            throttles = _shared_throttles(settings)
            for name, throttle in throttles.items():
                setattr(app.state, name, throttle)
            try:
                yield
            finally:
                for throttle in throttles.values():
                    await throttle.close()

    # FastAPI's own OpenTelemetry hooks look up the global providers on every request;
    # the service reports through its Prometheus metrics and access log instead.
    app = FastAPI(
        title="healthdb reference service",
        version="0.1.0",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.token_config = TokenConfig(
        secret=settings.resolved_jwt_secret(),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        access_ttl=settings.access_token_ttl,
    )
    app.state.verified_tokens = VerifiedTokens(app.state.token_config)
    errors.install(app)
    # Inside the body limit (added first = innermost): it scans bodies already bounded.
    app.add_middleware(SuspiciousInputMonitor)
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, max_json_depth=settings.max_json_depth
    )
    app.add_middleware(AccessLog)  # outermost: ids and times everything below
    # Routes are matched in order, one by one: the busiest routers come first.
    app.include_router(patients.router)
    app.include_router(appointments.router)
    app.include_router(auth_routes.router)
    app.include_router(users.router)
    app.include_router(registration.router)
    app.include_router(audit.router)
    app.include_router(fhir.router)
    # Operational figures span every clinic: platform operators only, never a clinic admin.
    app.include_router(admin_router(require_admin=require_operator))
    app.include_router(health_router())
    app.include_router(metrics_router(require=require_operator))
    return app


def configured_app(settings: ApiSettings | None = None) -> FastAPI:
    """The app as ``healthdb serve`` runs it, logging configured (JSON or console, SQL only
    at DEBUG or with ``HEALTHDB_ECHO_SQL``, one access line per request). Also the factory
    each worker process of ``healthdb serve --workers N`` calls."""
    from healthdb.logging import configure

    settings = settings or ApiSettings()
    configure(level=settings.log_level, json=settings.log_json, echo_sql=settings.echo_sql)
    configure_access_log(json_lines=settings.log_json)
    return create_app(settings)


async def preflight(settings: ApiSettings) -> HealthdbError | None:
    """What would make the service refuse to start (an unsafe database role, missing keys,
    an unreachable database), checked once before worker processes are started; an
    embedded database is migrated here, once, instead of by every worker."""
    try:
        if settings.auto_migrate and not settings.is_postgres:
            await upgrade(settings.admin_url)
        async with DatabaseService.connect(settings):
            return None
    except HealthdbError as exc:
        return exc


def _shared_throttles(settings: ApiSettings) -> dict[str, RedisLoginThrottle]:
    """With Redis configured, one login and one registration throttle for every instance
    (in-process fallback while Redis is unreachable); without, the routes create in-process
    ones on first use."""
    if settings.redis_url is None:
        return {}

    def client() -> Redis:
        assert settings.redis_url is not None
        return Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
        )

    login = RedisLoginThrottle(
        client(), fallback=auth_routes.memory_throttle(settings), timeout=settings.redis_timeout
    )
    return {
        "login_throttle": login,
        "register_throttle": registration.shared_throttle(settings, client()),
    }
