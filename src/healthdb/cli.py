"""The ``healthdb`` command line."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import SecretStr
from rich.console import Console

from healthdb.settings import Settings

if TYPE_CHECKING:
    from healthdb.internal.audit import VerifyResult

app = typer.Typer(help="healthdb: multi-tenant healthcare database layer", no_args_is_help=True)
console = Console(stderr=True)
audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@app.command()
def migrate() -> None:
    """Bring the database named by HEALTHDB_ADMIN_DATABASE_URL (or DATABASE_URL) to head.

    On PostgreSQL, when HEALTHDB_DATABASE_URL names a different user, also create that
    runtime role (or update its password and grants): it owns nothing and has neither
    SUPERUSER nor BYPASSRLS, so row-level security binds the service.
    """
    from healthdb.migrate import needs_runtime_role, upgrade_with_role

    settings = Settings()
    asyncio.run(upgrade_with_role(settings))
    console.print("[green]database is at head[/green]")
    if needs_runtime_role(settings):
        console.print("[green]runtime role provisioned (no SUPERUSER, no BYPASSRLS)[/green]")


@app.command()
def demo(
    database: Annotated[
        Path, typer.Option(help="SQLite file to create (replaced if it exists)")
    ] = Path("healthdb-demo.sqlite3"),
) -> None:
    """Migrate a fresh SQLite file and run a scripted scenario through every facade method."""
    from healthdb.demo import main as run_demo
    from healthdb.logging import configure

    configure(level="WARNING", json=False)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    settings = Settings(database_url=SecretStr(f"sqlite+aiosqlite:///{database}"))
    run_demo(settings, lambda line: console.print(f"• {line}"))


@audit_app.command("verify")
def audit_verify(
    clinic_id: Annotated[
        str | None, typer.Option(help="verify only this clinic's chain [default: every clinic]")
    ] = None,
) -> None:
    """Walk the audit hash chains of HEALTHDB_ADMIN_DATABASE_URL (or DATABASE_URL).

    Exit 0 when every chain is intact; exit 1 naming the first edited, deleted, inserted or
    reordered row (clinic, seq, reason).
    """
    from healthdb.context import as_uuid
    from healthdb.errors import InvalidInput

    try:
        clinic = None if clinic_id is None else as_uuid(clinic_id, "--clinic-id")
    except InvalidInput as exc:
        raise typer.BadParameter(str(exc)) from None
    result = asyncio.run(_verify_audit(Settings(), clinic))
    if result.first_bad is None:
        typer.echo(f"audit chain intact: {result.checked} rows")
        return
    bad = result.first_bad
    seq = "none" if bad.seq is None else str(bad.seq)
    typer.echo(
        f"audit chain BROKEN at clinic {bad.clinic_id}, seq {seq}: {bad.reason} "
        f"({result.checked} rows checked)",
        err=True,
    )
    raise typer.Exit(1)


async def _verify_audit(settings: Settings, clinic_id: uuid.UUID | None) -> VerifyResult:
    from sqlalchemy.ext.asyncio import AsyncSession

    from healthdb.engine import create_engine
    from healthdb.internal.audit import verify

    # The owner sees every clinic's rows (verify sets the clinic per chain for row-level
    # security); one consistent snapshot on PostgreSQL.
    admin = Settings(database_url=settings.admin_url)
    engine = create_engine(admin.url, admin, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            if admin.is_postgres:
                conn = await conn.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
            async with conn.begin(), AsyncSession(bind=conn) as session:
                return await verify(session, clinic_id)
    finally:
        await engine.dispose()


def main() -> None:
    app()
