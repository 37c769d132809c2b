"""Bulk import of FHIR ``Patient`` NDJSON into one clinic, through the facade's bulk path.

Each non-blank line is parsed and validated (:func:`~healthdb_api.fhir.mapping.parse_patient`:
the FHIR R4 models, then the service's own rules); good lines are inserted a block at a time
with ``db.execute_batch(rows, Patient)`` (COPY + INSERT under row-level security on
PostgreSQL, one ``phi.create`` audit row per patient in its chunk's transaction). A bad line
is reported with its line number and a PHI-free reason, and the others still land:
``created + existing + failed == lines``, always.

Re-running a file creates no duplicates: a line whose medical record number is already in
the clinic counts as ``existing`` and is left as it is (``PUT`` updates a patient); an MRN
that repeats within the file, or that a deleted patient of the clinic still holds, fails
that line. Ids in the file are ignored: every patient gets a new one, so another clinic's
id can neither collide nor be probed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import BatchResult, DatabaseService, QueryOptions, Role
from healthdb.models import Patient
from healthdb_api.fhir.mapping import InvalidResource, looks_masked, parse_patient

__all__ = ["ImportReport", "LineFailure", "count_lines", "import_ndjson", "read_lines"]

PURPOSE = "fhir_import"
#: Lines validated and matched per round (several bulk chunks run concurrently in one).
BLOCK_LINES = 10_000
_MATCH_BATCH = 1000

OnProgress = Callable[[int], None]
T = TypeVar("T")


def _batches(items: Iterable[T], size: int) -> Iterator[Sequence[T]]:
    """``itertools.batched`` (Python 3.12) for 3.11."""
    iterator = iter(items)
    while batch := tuple(islice(iterator, size)):
        yield batch


@dataclass(frozen=True, slots=True)
class LineFailure:
    """A line that did not land: its number in the file (1-based) and why, without PHI."""

    line: int
    reason: str


@dataclass(slots=True)
class ImportReport:
    """What an import did: every counted line was created, already there, or failed."""

    lines: int = 0
    created: int = 0
    existing: int = 0
    failures: list[LineFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def succeeded(self) -> int:
        return self.created + self.existing

    @property
    def failed(self) -> int:
        return len(self.failures)


class _BadLine(Exception):
    pass


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` of every non-blank line (decoding is per line, so one
    line that is not UTF-8 fails alone)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, raw


def count_lines(path: Path) -> int:
    """How many lines :func:`read_lines` yields (for a progress bar's total)."""
    return sum(1 for _ in read_lines(path))


async def import_ndjson(
    db: DatabaseService,
    lines: Iterable[tuple[int, bytes | str]],
    *,
    clinic_id: uuid.UUID,
    mrn_system: str,
    chunk_size: int = 2000,
    on_progress: OnProgress | None = None,
) -> ImportReport:
    """Import ``lines`` into ``clinic_id`` (which must exist); see the module docstring."""
    started = time.perf_counter()
    report = ImportReport()
    seen: dict[str, int] = {}
    progress = on_progress or (lambda _n: None)
    async with db.clinic(clinic_id, role=Role.CLINIC_ADMIN, purpose=PURPOSE):
        for block in _batches(lines, BLOCK_LINES):
            await _block(db, block, report, seen, mrn_system, chunk_size, progress)
    report.failures.sort(key=lambda f: f.line)
    report.seconds = time.perf_counter() - started
    return report


async def _block(
    db: DatabaseService,
    block: Sequence[tuple[int, bytes | str]],
    report: ImportReport,
    seen: dict[str, int],
    mrn_system: str,
    chunk_size: int,
    progress: OnProgress,
) -> None:
    parsed: list[tuple[int, dict[str, Any]]] = []
    for number, raw in block:
        report.lines += 1
        try:
            row = _row(raw, mrn_system)
        except _BadLine as exc:
            report.failures.append(LineFailure(number, str(exc)))
            continue
        first = seen.setdefault(row["mrn"], number)
        if first != number:
            report.failures.append(
                LineFailure(number, f"the medical record number repeats line {first}")
            )
            continue
        parsed.append((number, row))
    holders = await _mrn_holders(db, [row["mrn"] for _, row in parsed])
    fresh: list[tuple[int, dict[str, Any]]] = []
    for number, row in parsed:
        deleted = holders.get(row["mrn"])
        if deleted is None:
            fresh.append((number, row))
        elif deleted:
            reason = "a deleted patient of this clinic holds this medical record number"
            report.failures.append(LineFailure(number, reason))
        else:
            report.existing += 1
    progress(len(block) - len(fresh))
    if fresh:
        await _insert(db, fresh, report, chunk_size, progress)


def _row(raw: bytes | str, mrn_system: str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise _BadLine("not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise _BadLine(f"not valid JSON (at character {exc.pos})") from None
    try:
        fields = parse_patient(body, mrn_system=mrn_system).model_dump(exclude={"notes"})
    except InvalidResource as exc:
        raise _BadLine("; ".join(f"{i.expression}: {i.message}" for i in exc.issues)) from None
    if looks_masked(fields["ssn"]):
        raise _BadLine("Patient.identifier: the US SSN looks masked; export it unmasked")
    return fields


async def _mrn_holders(db: DatabaseService, mrns: list[str]) -> dict[str, bool]:
    """``{mrn: deleted}`` for the MRNs some patient of the clinic holds (deleted ones too:
    the clinic's MRNs stay unique across soft deletes)."""

    async def read(session: AsyncSession) -> dict[str, bool]:
        found: dict[str, bool] = {}
        for part in _batches(mrns, _MATCH_BATCH):
            statement = select(Patient.mrn, Patient.deleted_at.is_not(None)).where(
                Patient.mrn.in_(part)
            )
            found.update({mrn: bool(gone) for mrn, gone in (await session.execute(statement))})
        return found

    if not mrns:
        return {}
    return await db.execute_read(read, QueryOptions.for_phi("fhir.import.match"))


async def _insert(
    db: DatabaseService,
    fresh: list[tuple[int, dict[str, Any]]],
    report: ImportReport,
    chunk_size: int,
    progress: OnProgress,
) -> None:
    result: BatchResult[Any] = await db.execute_batch(
        [row for _, row in fresh],
        Patient,
        chunk_size=chunk_size,
        name="fhir.import",
        on_progress=progress,
    )
    for failure in result.failures:
        reason = f"{failure.code}: {failure.message}"
        report.failures.append(LineFailure(fresh[failure.index][0], reason))
    report.created += result.succeeded
