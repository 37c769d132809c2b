"""``healthdb fhir import FILE.ndjson --clinic-id ID``: FHIR Patient NDJSON into one clinic.

Configured like the service (``HEALTHDB_*``, ``HEALTHDB_FHIR_MRN_SYSTEM``); a progress bar
counts lines, and the summary lists failed lines by number and reason (the first 20 on
screen; ``--failures FILE`` writes them all as JSON lines). Exit status 1 when any line
failed, 2 when the clinic does not exist. The FHIR models load only when the command runs.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from healthdb import DatabaseService, Settings
from healthdb.models import Clinic

if TYPE_CHECKING:
    from healthdb_api.fhir.importer import ImportReport

app = typer.Typer(help="FHIR R4: bulk NDJSON import", no_args_is_help=True)
console = Console(stderr=True)
SHOWN_FAILURES = 20


@app.command("import")
def import_file(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="NDJSON, one FHIR Patient per line"
        ),
    ],
    clinic_id: Annotated[str, typer.Option(help="the clinic to import into")],
    chunk_size: Annotated[
        int, typer.Option(min=1, max=100_000, help="patients per bulk-insert transaction")
    ] = 2000,
    failures: Annotated[
        Path | None, typer.Option(dir_okay=False, help="write every failed line here (JSON lines)")
    ] = None,
) -> None:
    """Import FHIR Patient resources; medical record numbers already in the clinic are left
    as they are, so re-running a file creates no duplicates."""
    from healthdb.logging import configure
    from healthdb_api.fhir.importer import count_lines
    from healthdb_api.fhir.settings import FhirSettings

    try:
        clinic = uuid.UUID(clinic_id)
    except ValueError:
        raise typer.BadParameter("must be a clinic id (a UUID)", param_hint="--clinic-id") from None
    configure(level="WARNING", json=False)
    # Multi-second bulk chunks are expected here: do not report each as a slow query.
    settings = Settings().model_copy(update={"slow_query_ms": 120_000.0})
    mrn_system = FhirSettings().mrn_system
    columns = (TextColumn("lines"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("lines", total=count_lines(file))
        report = asyncio.run(
            _run(settings, clinic, file, mrn_system, chunk_size, lambda n: bar.advance(task, n))
        )
    if report is None:
        console.print(f"[red]no clinic {clinic}[/red]")
        raise typer.Exit(2)
    _summary(report, failures)
    if report.failed:
        raise typer.Exit(1)


async def _run(
    settings: Settings,
    clinic: uuid.UUID,
    file: Path,
    mrn_system: str,
    chunk_size: int,
    advance: Callable[[int], None],
) -> ImportReport | None:
    from healthdb_api.fhir.importer import import_ndjson, read_lines

    async with DatabaseService.connect(settings) as db:
        if await db.execute_read(lambda s: s.get(Clinic, clinic)) is None:
            return None
        return await import_ndjson(
            db,
            read_lines(file),
            clinic_id=clinic,
            mrn_system=mrn_system,
            chunk_size=chunk_size,
            on_progress=advance,
        )


def _summary(report: ImportReport, failures: Path | None) -> None:
    rate = report.lines / report.seconds if report.seconds else 0.0
    console.print(
        f"{report.lines} line(s): {report.created} created, {report.existing} already present, "
        f"{report.failed} failed in {report.seconds:.1f} s ({rate:,.0f} lines/s)"
    )
    for failure in report.failures[:SHOWN_FAILURES]:
        console.print(f"  line {failure.line}: {failure.reason}", markup=False)
    if report.failed > SHOWN_FAILURES:
        console.print(f"  ... and {report.failed - SHOWN_FAILURES} more")
    if failures is not None:
        rows = (json.dumps({"line": f.line, "reason": f.reason}) + "\n" for f in report.failures)
        failures.write_text("".join(rows))
        console.print(f"failed lines written to {failures}", markup=False)
