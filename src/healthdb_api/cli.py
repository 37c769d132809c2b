"""The ``healthdb`` command line of the reference service.

The library's commands (``migrate``, ``demo``, ``audit verify|anchor``, ``keys``) plus the
service's own: ``serve``, ``seed-demo`` and ``create-user``. With no configuration at all,
``healthdb serve`` runs on the embedded default (SQLite file ``./healthdb.sqlite3``,
in-process cache) and migrates it on start.
"""

from __future__ import annotations

import asyncio
import math
import re
import signal
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from sqlalchemy.exc import IntegrityError

from healthdb import Role
from healthdb import cli as library_cli
from healthdb_api.fhir import cli as fhir_cli
from healthdb_api.settings import ApiSettings

app = typer.Typer(
    help="healthdb: multi-tenant healthcare database layer and reference service",
    no_args_is_help=True,
)
console = Console(stderr=True)
OPERATOR_HANDLE = re.compile(r"[A-Za-z0-9._-]{1,64}")

# The library's commands (migrate, demo) and command groups (audit, keys), unchanged.
app.registered_commands.extend(library_cli.app.registered_commands)
app.registered_groups.extend(library_cli.app.registered_groups)
app.add_typer(fhir_cli.app, name="fhir")  # fhir import


# -- the service ------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="worker processes (one per core is typical)")
    ] = 1,
) -> None:
    """Run the HTTP service (configured by HEALTHDB_* variables; SQLite by default)."""
    import uvicorn

    from healthdb_api.app import configured_app, preflight

    settings = ApiSettings()
    options = {
        "host": host,
        "port": port,
        "log_level": _UVICORN_LEVELS.get(settings.log_level.lower(), settings.log_level.lower()),
        # Request lines carry query strings (patient searches): the service's own access log
        # (route templates, never values) replaces uvicorn's.
        "access_log": False,
        # Keep the handlers `configure` installed: uvicorn's lines get the same renderer.
        "log_config": None,
        "server_header": False,
        "timeout_graceful_shutdown": max(1, math.ceil(settings.shutdown_timeout)),
    }
    _exit_zero_after_graceful_shutdown()
    if workers > 1:
        # Each worker builds its own app (and pools, and audit writer); the checks that would
        # refuse to start run once here, so a refusal is one clear line, not a restart loop.
        error = asyncio.run(preflight(settings))
        if error is not None:
            console.print(f"healthdb serve: refusing to start: {error}", markup=False)
            raise typer.Exit(3)
        uvicorn.run("healthdb_api.app:configured_app", factory=True, workers=workers, **options)  # type: ignore[arg-type]
        return
    application = configured_app(settings)
    try:
        uvicorn.run(application, **options)  # type: ignore[arg-type]
    finally:
        # A refused start-up (e.g. an unsafe database role) exits non-zero through uvicorn;
        # end with one clear line naming the reason, not only a traceback.
        error = getattr(application.state, "startup_error", None)
        if error is not None:
            console.print(
                f"healthdb serve: refusing to start: {error}", markup=False, soft_wrap=True
            )


_UVICORN_LEVELS = {"warn": "warning", "fatal": "critical"}


def _exit_zero_after_graceful_shutdown() -> None:
    """uvicorn re-raises SIGTERM/SIGINT once it has shut down gracefully, with the handlers
    that were installed before it started. Install handlers that end the process with
    status 0, so a clean shutdown on request is reported as success (not "killed")."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


# -- demo data --------------------------------------------------------------------------------


@app.command("seed-demo")
def seed_demo(
    clinics: Annotated[int, typer.Option(min=1, help="clinics to create")] = 1,
    patients: Annotated[int, typer.Option(min=0, help="patients per clinic")] = 1000,
    appointments: Annotated[
        int | None, typer.Option(min=0, help="appointments per clinic [default: patients/5]")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same data)")] = 42,
    migrate: Annotated[bool, typer.Option(help="migrate the database to head first")] = True,
) -> None:
    """Load synthetic clinics, staff, patients and appointments into HEALTHDB_DATABASE_URL."""
    from healthdb import Settings
    from healthdb.logging import configure
    from healthdb_api.seed import SeedPlan, SeedReport
    from healthdb_api.seed import seed_demo as run_seed

    configure(level="WARNING", json=False)
    # Multi-second bulk chunks are expected here: do not report each one as a slow query.
    settings = Settings().model_copy(update={"slow_query_ms": 120_000.0})
    plan = SeedPlan(clinics=clinics, patients=patients, appointments=appointments, seed=seed)
    columns = (
        TextColumn("{task.description:<13}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        tasks: dict[str, TaskID] = {
            table: bar.add_task(table, total=total) for table, total in plan.totals().items()
        }

        def advance(table: str, rows: int) -> None:
            bar.advance(tasks[table], rows)

        report: SeedReport = asyncio.run(
            run_seed(settings, plan, on_progress=advance, migrate=migrate)
        )

    summary = Table(title="seeded")
    summary.add_column("clinic")
    summary.add_column("id", no_wrap=True, min_width=36)
    for name in ("staff", "patients", "appointments"):
        summary.add_column(name, justify="right")
    for clinic in report.clinics:
        summary.add_row(
            clinic.name,
            str(clinic.clinic_id),
            str(clinic.staff),
            str(clinic.patients),
            str(clinic.appointments),
        )
    console.print(summary)
    rate = report.patients / report.patient_seconds if report.patient_seconds else 0.0
    console.print(
        f"{report.patients} patients in {report.patient_seconds:.1f} s ({rate:,.0f} rows/s); "
        f"total {report.seconds:.1f} s. Seeded staff cannot log in."
    )
    if not report.ok:
        console.print(f"[red]{len(report.failures)} row(s) failed:[/red]")
        for failure in report.failures[:20]:
            console.print(
                f"  {failure.table} #{failure.index} (clinic {failure.clinic_id}): "
                f"{failure.code}: {failure.message}"
            )
        if len(report.failures) > 20:
            console.print(f"  ... and {len(report.failures) - 20} more")
        raise typer.Exit(1)


# -- accounts ---------------------------------------------------------------------------------


@app.command("create-user")
def create_user(
    email: Annotated[str, typer.Option(help="login e-mail")],
    full_name: Annotated[str, typer.Option(help="display name")],
    role: Annotated[Role, typer.Option(help="staff role")] = Role.CLINIC_ADMIN,
    clinic_id: Annotated[
        str | None, typer.Option(help="existing clinic to add the user to")
    ] = None,
    clinic_name: Annotated[
        str | None, typer.Option(help="create a new clinic with this name instead")
    ] = None,
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="HEALTHDB_NEW_USER_PASSWORD",
            help="read from the prompt or HEALTHDB_NEW_USER_PASSWORD, never from argv",
        ),
    ] = "",
) -> None:
    """Create a staff account (and, with --clinic-name, its clinic) from the command line."""
    from healthdb_api.accounts import AccountError, create_account

    if (clinic_id is None) == (clinic_name is None):
        raise typer.BadParameter("give exactly one of --clinic-id or --clinic-name")
    try:
        user_id, clinic = asyncio.run(
            create_account(
                ApiSettings(),
                email=email,
                password=password,
                full_name=full_name,
                role=role,
                clinic_id=clinic_id,
                clinic_name=clinic_name,
            )
        )
    except AccountError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"[green]created {role.value} {user_id} in clinic {clinic}[/green]")


# -- platform operators -----------------------------------------------------------------------

operator_app = typer.Typer(
    help="Platform operators: read operational figures across clinics, no clinic's rows.",
    no_args_is_help=True,
)
app.add_typer(operator_app, name="operator")
OperatorName = Annotated[
    str, typer.Option(help="the operator's handle (letters, digits, . _ -)", show_default=False)
]


@operator_app.command("create")
def operator_create(name: OperatorName) -> None:
    """Create an operator through the database owner (HEALTHDB_ADMIN_DATABASE_URL) and print
    its key to stdout, once: only its SHA-256 is stored. Send it as `Authorization: Bearer
    <key>` to /metrics and /api/v1/admin/database/*."""
    from healthdb import ConflictError
    from healthdb_api.operators import create_operator

    if not OPERATOR_HANDLE.fullmatch(name):
        raise typer.BadParameter("a handle of 1-64 letters, digits, '.', '_' or '-'")
    try:
        key = asyncio.run(create_operator(ApiSettings(), name))
    except (ConflictError, IntegrityError):
        console.print(f"[red]an operator named {name!r} already exists[/red]")
        raise typer.Exit(1) from None
    typer.echo(key)
    console.print(f"[green]created operator {name!r}; the key above is not shown again[/green]")


@operator_app.command("revoke")
def operator_revoke(name: OperatorName) -> None:
    """Deactivate an operator's key at once."""
    from healthdb_api.operators import revoke_operator

    if not asyncio.run(revoke_operator(ApiSettings(), name)):
        console.print(f"[red]no active operator named {name!r}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]revoked operator {name!r}[/green]")


@operator_app.command("list")
def operator_list() -> None:
    """The operators and whether each is active (never their keys)."""
    from healthdb_api.operators import list_operators

    for name, active in asyncio.run(list_operators(ApiSettings())):
        typer.echo(f"{name}\t{'active' if active else 'revoked'}")


def main() -> None:
    app()
