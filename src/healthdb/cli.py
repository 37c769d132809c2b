"""The ``healthdb`` command line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr
from rich.console import Console

from healthdb.settings import Settings

app = typer.Typer(help="healthdb: multi-tenant healthcare database layer", no_args_is_help=True)
console = Console(stderr=True)


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


def main() -> None:
    app()
