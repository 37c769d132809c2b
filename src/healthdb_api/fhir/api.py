"""The ``/fhir`` router: Patient interactions, bulk export, and an OperationOutcome for
everything else under ``/fhir``.

The app includes :data:`router`; its lifespan starts the export worker after the database
is connected and stops it before the database closes. Set ``app.state.fhir_settings``
before start-up to override ``HEALTHDB_FHIR_*``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Response
from fastapi.routing import APIRoute

from healthdb_api.fhir import bulk_routes, routes
from healthdb_api.fhir.export import ExportRunner
from healthdb_api.fhir.http import FhirState
from healthdb_api.fhir.outcome import FhirError, FhirRoute
from healthdb_api.fhir.settings import FhirSettings

__all__ = ["FhirSettings", "router"]

PREFIX = "/fhir"


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = getattr(app.state, "fhir_settings", None) or FhirSettings()
    runner = ExportRunner(app.state.db, settings)
    app.state.fhir = FhirState(settings=settings, runner=runner)
    try:
        yield
    finally:
        await runner.close()


router = APIRouter(prefix=PREFIX, tags=["fhir"], lifespan=_lifespan)
# The bulk routes first: "/Patient/$export" must not be taken for a Patient id.
router.include_router(bulk_routes.router)
router.include_router(routes.router)
_fallback = APIRouter(route_class=FhirRoute)


@_fallback.api_route(
    "/{path:path}",
    methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
    include_in_schema=False,
)
async def unsupported(path: str) -> Response:
    """Anything else under ``/fhir``: 405 for a known path, else 404, as OperationOutcomes
    (the path itself is not echoed: it may carry an identifier)."""
    here = "/" + path
    allowed = sorted(
        {
            method
            for known in (bulk_routes.router, routes.router)
            for route in known.routes
            if isinstance(route, APIRoute) and route.path_regex.match(here)
            for method in route.methods or ()
        }
    )
    if allowed:
        raise FhirError(
            405,
            "method not allowed here",
            code="not-supported",
            headers={"Allow": ", ".join(allowed)},
        )
    raise FhirError(
        404, "no such FHIR endpoint (this server supports Patient)", code="not-supported"
    )


router.include_router(_fallback)
