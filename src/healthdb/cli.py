"""The ``healthdb`` command line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from pydantic import SecretStr
from rich.console import Console

from healthdb.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from healthdb.internal.audit_anchor import Anchor
    from healthdb.key_rotation import RotationReport

T = TypeVar("T")

app = typer.Typer(help="healthdb: multi-tenant healthcare database layer", no_args_is_help=True)
console = Console(stderr=True)
audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
keys_app = typer.Typer(
    help="Encryption keys of PHI at rest (SSNs, clinical notes).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


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
    anchor: Annotated[
        Path | None,
        typer.Option(help="also check the chain heads recorded by `healthdb audit anchor`"),
    ] = None,
) -> None:
    """Walk the audit hash chains of HEALTHDB_ADMIN_DATABASE_URL (or DATABASE_URL).

    Exit 0 when every chain is intact; exit 1 naming the first edited, deleted, inserted or
    reordered row (clinic, seq, lane, reason). With --anchor, rows deleted from the end of
    a chain since the anchor, or a chain rewritten with recomputed hashes, fail too. Exit 2
    on a bad option or an unreadable or malformed anchor file.
    """
    from healthdb.context import as_uuid
    from healthdb.errors import InvalidInput
    from healthdb.internal.audit_verify import verify

    try:
        clinic = None if clinic_id is None else as_uuid(clinic_id, "--clinic-id")
    except InvalidInput as exc:
        raise typer.BadParameter(str(exc)) from None
    # Read the anchor before touching the database: a bad file is the caller's mistake.
    expected = None if anchor is None else _read_anchor(anchor)
    result = asyncio.run(
        _read_as_owner(Settings(), lambda session: verify(session, clinic, expected))
    )
    if result.first_bad is None:
        typer.echo(f"audit chain intact: {result.checked} rows")
        return
    bad = result.first_bad
    seq = "none" if bad.seq is None else str(bad.seq)
    typer.echo(
        f"audit chain BROKEN at clinic {bad.clinic_id}, seq {seq} (lane {bad.lane}): "
        f"{bad.reason} ({result.checked} rows checked)",
        err=True,
    )
    raise typer.Exit(1)


@audit_app.command("anchor")
def audit_anchor(
    out: Annotated[
        Path | None, typer.Option(help="write the anchor to this file [default: stdout]")
    ] = None,
    force: Annotated[bool, typer.Option(help="overwrite --out if it exists")] = False,
) -> None:
    """Print (or write to --out) the head of every audit chain, as JSON.

    Keep it outside the database, where its owner cannot rewrite it (WORM storage, a
    ticket, a signed log); `healthdb audit verify --anchor FILE` then detects rows deleted
    from the end of a chain and chains rewritten with recomputed hashes, up to these heads.
    Exit 2 when --out exists (without --force) or cannot be written.
    """
    from healthdb.internal.audit_verify import take_anchor

    if out is not None and out.exists() and not force:
        _fail(f"{out} already exists; an anchor is never overwritten without --force")
    taken = asyncio.run(_read_as_owner(Settings(), take_anchor))
    document = taken.to_json() + "\n"
    if out is None:
        typer.echo(document, nl=False)
        return
    try:
        # "x" refuses a file created since the check above; --force replaces it.
        with out.open("w" if force else "x", encoding="utf-8") as handle:
            handle.write(document)
    except OSError as exc:
        _fail(f"cannot write anchor {out}: {exc.strerror or exc}")
    console.print(f"anchored {len(taken.heads)} chain head(s) to {out}")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _read_anchor(path: Path) -> Anchor:
    from healthdb.errors import InvalidInput
    from healthdb.internal.audit_anchor import Anchor

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read anchor {path}: {getattr(exc, 'strerror', None) or exc}")
    try:
        return Anchor.from_json(text)
    except InvalidInput as exc:
        _fail(f"malformed anchor {path}: {exc}")


async def _read_as_owner(settings: Settings, read: Callable[[AsyncSession], Awaitable[T]]) -> T:
    from sqlalchemy.ext.asyncio import AsyncSession

    from healthdb.engine import create_engine

    # The owner sees every clinic's rows (the audit readers set the clinic per chain for
    # row-level security); one consistent snapshot on PostgreSQL.
    admin = Settings(database_url=settings.admin_url)
    engine = create_engine(admin.url, admin, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            if admin.is_postgres:
                conn = await conn.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
            async with conn.begin(), AsyncSession(bind=conn) as session:
                return await read(session)
    finally:
        await engine.dispose()


@keys_app.command("generate")
def keys_generate() -> None:
    """Print a new random 256-bit key (base64url) to stdout; nothing is stored.

    Use it in HEALTHDB_PHI_KEYS ("id=key,id2=key2") or as HEALTHDB_PHI_INDEX_KEY.
    """
    from healthdb.phi.crypto import generate_key

    typer.echo(generate_key())


@keys_app.command("status")
def keys_status() -> None:
    """How many encrypted values (SSNs, notes) each key id protects, and which is active.

    Runs as the runtime role (HEALTHDB_DATABASE_URL), clinic by clinic, under row-level
    security. A key may be retired once it counts 0 values.
    """
    from healthdb.errors import HealthdbError
    from healthdb.key_rotation import STALE_INDEX, UNKNOWN_KEY

    try:
        active, counts = asyncio.run(_key_status(Settings()))
    except HealthdbError as exc:
        typer.echo(f"keys status failed: {exc}", err=True)
        raise typer.Exit(1) from None
    for key_id, count in counts.items():
        if key_id == UNKNOWN_KEY:
            typer.echo(f"{count:>10}  under a key missing from this keyring")
        elif key_id == STALE_INDEX:
            typer.echo(f"{count:>10}  indexed under a previous blind-index key")
        else:
            typer.echo(f"{count:>10}  {key_id}{'  (active)' if key_id == active else ''}")


@keys_app.command("rotate")
def keys_rotate(
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="values re-encrypted per transaction")
    ] = 500,
    new_key: Annotated[
        str | None,
        typer.Option(help="key file only: add a new key with this id and make it active first"),
    ] = None,
    new_index_key: Annotated[
        bool,
        typer.Option(help="key file only: make a new blind-index key current first"),
    ] = False,
) -> None:
    """Re-encrypt every SSN and note not under the active key, in batches, one transaction each.

    Safe to interrupt and to re-run: committed batches stay, and a re-run picks up only
    values still under an old key. With HEALTHDB_PHI_KEYS, add the new key there and point
    HEALTHDB_PHI_ACTIVE_KEY at it before rotating; with a key file (the SQLite default),
    ``--new-key ID`` does both (re-running with the same ID resumes).

    The blind-index key rotates the same way: set the new one as HEALTHDB_PHI_INDEX_KEY and
    the old one in HEALTHDB_PHI_PREVIOUS_INDEX_KEYS (lookups match both meanwhile), or pass
    ``--new-index-key`` with a key file (re-run without it to resume).
    """
    from healthdb.errors import HealthdbError

    settings = Settings()
    try:
        if new_key is not None:
            _activate_new_key(settings, new_key)
        if new_index_key:
            _activate_new_index_key(settings)
        report = asyncio.run(_rotate(settings, batch_size))
    except HealthdbError as exc:
        typer.echo(f"key rotation failed: {exc}", err=True)
        typer.echo("batches already committed are kept; re-run to resume", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("key rotation interrupted; re-run to resume", err=True)
        raise typer.Exit(130) from None
    typer.echo(
        f"re-encrypted {report.rotated} value(s) under key {report.active!r} "
        f"in {report.batches} batch(es)"
    )


def _activate_new_key(settings: Settings, key_id: str) -> None:
    import json

    from healthdb.errors import EncryptionError
    from healthdb.phi.keys import add_key_to_file, default_key_file

    path = default_key_file(settings)
    if settings.phi_keys is not None or path is None:
        raise EncryptionError(
            "--new-key needs a key file; with HEALTHDB_PHI_KEYS add the key there "
            "(healthdb keys generate) and set HEALTHDB_PHI_ACTIVE_KEY"
        )
    if not path.exists():
        raise EncryptionError(f"no key file at {path}: nothing is encrypted with it yet")
    data = json.loads(path.read_text())
    if data.get("active") == key_id:
        console.print(f"key {key_id!r} is already active; resuming")
        return
    add_key_to_file(path, key_id)
    console.print(f"added key {key_id!r} to {path} and made it active")


def _activate_new_index_key(settings: Settings) -> None:
    from healthdb.errors import EncryptionError
    from healthdb.phi.keys import default_key_file, new_index_key_in_file

    path = default_key_file(settings)
    if settings.phi_keys is not None or path is None or not path.exists():
        raise EncryptionError(
            "--new-index-key needs a key file; with HEALTHDB_PHI_KEYS set the new key as "
            "HEALTHDB_PHI_INDEX_KEY and the old one in HEALTHDB_PHI_PREVIOUS_INDEX_KEYS"
        )
    keyring = new_index_key_in_file(path)
    console.print(f"made blind-index key {keyring.index_id} current in {path}")


async def _key_status(settings: Settings) -> tuple[str, dict[str, int]]:
    from healthdb.key_rotation import status
    from healthdb.service import DatabaseService

    async with DatabaseService.connect(settings) as db:
        return db.keyring.active, await status(db)


async def _rotate(settings: Settings, batch_size: int) -> RotationReport:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from healthdb.key_rotation import rotate
    from healthdb.service import DatabaseService

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    async with DatabaseService.connect(settings) as db:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("re-encrypting", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return await rotate(db, batch_size=batch_size, on_progress=advance)


def main() -> None:
    app()
