"""Batch execution: bounded concurrency, per-item failure reports, and a bulk-insert fast path.

A chunk runs as one unit of work; when it fails, its items are re-run one by one so the
result names exactly the items that failed and why. Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import String, Table, insert, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase

from healthdb.cache import table_tag
from healthdb.errors import HealthdbError, InvalidInput
from healthdb.execution_options import TRUSTED
from healthdb.internal import phi_access
from healthdb.internal.phi_access import Access
from healthdb.internal.query_cache import written_tags
from healthdb.models.base import new_id, new_ids
from healthdb.phi.crypto import EncryptedText, current_keyring, fill_blind_indexes
from healthdb.phi.declaration import phi_fields

Item = TypeVar("Item")
R = TypeVar("R")
ItemOperation = Callable[[AsyncSession, Item], Awaitable[R]]
COPY_THRESHOLD = 50  # below this a multi-row INSERT beats a staging table
RunUnit = Callable[[Callable[[AsyncSession], Awaitable[Any]]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class BatchFailure:
    """One failed item: its index in the input, an error code and a PHI-free message."""

    index: int
    code: str
    message: str


@dataclass(slots=True)
class BatchResult(Generic[R]):
    """Outcome of ``execute_batch``: every item either succeeded or is listed in ``failures``."""

    total: int
    results: list[R | None]
    failures: list[BatchFailure] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        return self.total - len(self.failures)

    @property
    def ok(self) -> bool:
        return not self.failures


def _failure(index: int, exc: BaseException) -> BatchFailure:
    if isinstance(exc, HealthdbError):
        return BatchFailure(index, exc.code, str(exc))
    return BatchFailure(index, "error", type(exc).__name__)


async def run_batch(
    items: Sequence[Item],
    op: ItemOperation[Item, R],
    *,
    run_unit: RunUnit,
    concurrency: int,
    chunk_size: int,
    translate: Callable[[BaseException], BaseException],
    on_progress: Callable[[range], None] | None = None,
) -> BatchResult[R]:
    """Run ``op`` for every item, ``chunk_size`` items per transaction."""
    result: BatchResult[R] = BatchResult(total=len(items), results=[None] * len(items))
    gate = asyncio.Semaphore(concurrency)

    async def run_chunk(start: int) -> None:
        indexes = range(start, min(start + chunk_size, len(items)))
        async with gate:
            try:
                values = await run_unit(lambda s: _apply(s, op, [items[i] for i in indexes]))
                for i, value in zip(indexes, values, strict=True):
                    result.results[i] = value
            except Exception as exc:
                if len(indexes) == 1:  # the chunk was the item: its error is the item's error
                    result.failures.append(_failure(indexes[0], translate(exc)))
                else:
                    for i in indexes:
                        await run_single(i)
        if on_progress:
            on_progress(indexes)

    async def run_single(i: int) -> None:
        try:
            result.results[i] = await run_unit(lambda s: op(s, items[i]))
        except Exception as exc:
            result.failures.append(_failure(i, translate(exc)))

    await asyncio.gather(*(run_chunk(start) for start in range(0, len(items), chunk_size)))
    result.failures.sort(key=lambda f: f.index)
    return result


async def _apply(session: AsyncSession, op: ItemOperation[Item, R], chunk: list[Item]) -> list[R]:
    return [await op(session, item) for item in chunk]


def prepare_rows(
    model: type[DeclarativeBase], rows: Sequence[Mapping[str, Any]], clinic_id: uuid.UUID | None
) -> tuple[list[dict[str, Any] | None], list[BatchFailure]]:
    """Validate rows in Python (unknown columns, oversized strings, wrong clinic) and fill
    column defaults, so one bad row is reported instead of failing its whole chunk."""
    table = cast(Table, model.__table__)
    columns = {c.key: c for c in table.columns}
    prepared: list[dict[str, Any] | None] = []
    failures: list[BatchFailure] = []
    # Ids drawn in one batch (``new_id`` per row reads the OS's randomness each time).
    ids = iter(new_ids(len(rows))) if _generates_ids(columns) else iter(())
    for index, row in enumerate(rows):
        problem = _check_row(row, columns, clinic_id)
        if problem:
            prepared.append(None)
            failures.append(BatchFailure(index, InvalidInput.code, problem))
            continue
        full = dict(row)
        if "clinic_id" in columns and clinic_id is not None:
            full.setdefault("clinic_id", clinic_id)
        for key, column in columns.items():
            if key not in full and column.default is not None:
                default: Any = column.default
                if key == "id" and _generates_ids(columns):
                    full[key] = next(ids)
                else:
                    full[key] = default.arg(None) if default.is_callable else default.arg
        fill_blind_indexes(model, full, current_keyring())
        prepared.append(full)
    return prepared, failures


def _generates_ids(columns: Mapping[str, Any]) -> bool:
    """Whether the model's ``id`` defaults to :func:`~healthdb.models.base.new_id`
    (SQLAlchemy keeps the function it wraps as ``__wrapped__``)."""
    default = getattr(columns.get("id"), "default", None)
    function = getattr(getattr(default, "arg", None), "__wrapped__", None)
    return function is new_id


def _check_row(row: Any, columns: Mapping[str, Any], clinic_id: uuid.UUID | None) -> str | None:
    if not isinstance(row, Mapping):
        return "a bulk-insert item must be a mapping of column names to values"
    unknown = sorted(set(row) - set(columns))
    if unknown:
        return f"unknown columns: {', '.join(unknown[:5])}"
    if "clinic_id" in columns and row.get("clinic_id", clinic_id) != clinic_id:
        return "rows may only be inserted into the current clinic"
    for key, value in row.items():
        kind = columns[key].type
        too_long = isinstance(kind, String) and kind.length and isinstance(value, str)
        if too_long and len(value) > kind.length:
            return f"value too long for column {key} (max {kind.length})"
    return None


async def bulk_insert(
    session: AsyncSession, model: type[DeclarativeBase], rows: list[dict[str, Any]]
) -> None:
    """Insert ``rows``: COPY into a transaction-local staging table on PostgreSQL (COPY
    cannot target a table under row-level security, INSERT ... SELECT can), a multi-row
    INSERT elsewhere.

    The statements are Core on a tenant table, so they carry the isolation wall's private
    ``TRUSTED`` option: the rows were checked by :func:`prepare_rows` (every ``clinic_id`` is
    the scope's), and on PostgreSQL row-level security still checks each inserted row."""
    table = cast(Table, model.__table__)
    if session.get_bind().dialect.name != "postgresql" or len(rows) < COPY_THRESHOLD:
        await session.execute(insert(table), rows, execution_options=TRUSTED)
        return
    names = [c.name for c in table.columns]
    stage = f"hdb_stage_{uuid.uuid4().hex[:12]}"
    # Identifiers below come from the model's own metadata, never from input.
    create = f'CREATE TEMP TABLE "{stage}" (LIKE "{table.name}" INCLUDING DEFAULTS) ON COMMIT DROP'
    await session.execute(text(create), execution_options=TRUSTED)
    raw = await (await session.connection()).get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    # COPY skips SQLAlchemy's bind processing: encrypt PHI columns here, as an INSERT would.
    dialect = session.get_bind().dialect
    sealed = {c.name: c.type for c in table.columns if isinstance(c.type, EncryptedText)}
    records = [
        tuple(
            sealed[n].process_bind_param(r.get(n), dialect) if n in sealed else r.get(n)
            for n in names
        )
        for r in rows
    ]
    await driver.copy_records_to_table(stage, records=records, columns=names)
    cols = ", ".join(f'"{n}"' for n in names)
    copy_back = f'INSERT INTO "{table.name}" ({cols}) SELECT {cols} FROM "{stage}"'  # noqa: S608
    await session.execute(text(copy_back), execution_options=TRUSTED)


def _creates(
    model: type[DeclarativeBase], fields: Mapping[str, Any], rows: list[dict[str, Any]]
) -> list[Access]:
    return [
        Access.of(
            "phi.create",
            model,
            None if row.get("id") is None else str(row["id"]),
            tuple(sorted(name for name in fields if row.get(name) is not None)),
        )
        for row in rows
    ]


async def run_bulk_insert(
    rows: Sequence[Any],
    model: type[DeclarativeBase],
    *,
    clinic_id: uuid.UUID | None,
    run_unit: RunUnit,
    concurrency: int,
    chunk_size: int,
    translate: Callable[[BaseException], BaseException],
    on_progress: Callable[[int], None] | None = None,
) -> BatchResult[None]:
    """Validate ``rows``, insert them ``chunk_size`` per transaction, and re-run a failed
    chunk row by row so only the guilty rows are reported."""
    prepared, failures = prepare_rows(model, rows, clinic_id)
    good = [row for row in prepared if row is not None]
    index_of = [i for i, row in enumerate(prepared) if row is not None]
    tag = table_tag(cast(Table, model.__table__).name, clinic_id)

    fields = phi_fields(model)

    async def insert_chunk(session: AsyncSession, chunk: list[dict[str, Any]]) -> None:
        written_tags(session.sync_session).add(tag)
        await bulk_insert(session, model, chunk)
        if fields:  # audited like any other create, in the chunk's transaction
            phi_access.pending(session.sync_session).extend(_creates(model, fields, chunk))

    chunks = [good[i : i + chunk_size] for i in range(0, len(good), chunk_size)]
    if on_progress and failures:
        on_progress(len(failures))

    def chunk_progress(done: range) -> None:
        if on_progress:
            on_progress(sum(len(chunks[i]) for i in done))

    outcome = await run_batch(
        chunks,
        insert_chunk,
        run_unit=run_unit,
        concurrency=concurrency,
        chunk_size=1,
        translate=translate,
        on_progress=chunk_progress,
    )
    result: BatchResult[None] = BatchResult(total=len(rows), results=[None] * len(rows))
    result.failures.extend(failures)
    for failed in outcome.failures:
        start = failed.index * chunk_size
        singles = [[row] for row in chunks[failed.index]]
        retry = await run_batch(
            singles,
            insert_chunk,
            run_unit=run_unit,
            concurrency=concurrency,
            chunk_size=1,
            translate=translate,
        )
        result.failures.extend(
            BatchFailure(index_of[start + f.index], f.code, f.message) for f in retry.failures
        )
    result.failures.sort(key=lambda f: f.index)
    return result
