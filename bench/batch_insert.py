"""Bulk-insert throughput of ``db.execute_batch(rows, Patient)`` on PostgreSQL and SQLite.

    .venv/bin/python bench/batch_insert.py [--rows 100000] [--chunk-size 5000] [--runs 5]
                                           [--pg-url URL]

The PostgreSQL pair (facade, then raw COPY, each on its own fresh database) is repeated
``--runs`` times: the figures are the min / median / max of the per-run ratio, so a
machine that is busy for one run shows up as spread instead of as a different result.

Baseline (PostgreSQL, same run, same rows): raw asyncpg ``copy_records_to_table`` into a fresh
``CREATE TABLE ... (LIKE patients INCLUDING ALL)`` (same columns, defaults, constraints and
indexes; no foreign key). The baseline's timing includes turning the mappings into records
and filling the column defaults the facade fills (id, clinic_id, timestamps, version).
Writes ``bench/results/batch_insert.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from _common import (
    DEFAULT_PG_URL,
    asyncpg_dsn,
    bench_keys,
    machine,
    patient_rows,
    postgres_version,
    runtime_role,
    throwaway_database,
    timestamp,
    versions,
    write_json,
)
from healthdb import BatchResult, DatabaseService, Settings
from healthdb.clinics import create_clinic
from healthdb.migrate import upgrade
from healthdb.models import Patient

COPY_TABLE = "bench_patients_copy"


@dataclass(frozen=True, slots=True)
class Run:
    key: str
    label: str
    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def settings_for(url: str) -> Settings:
    return Settings(
        database_url=url,
        pool_size=10,
        max_overflow=0,
        slow_query_ms=10_000,
        sqlite_busy_timeout_ms=60_000,  # up to 10 chunk writers queue on SQLite's write lock
        **bench_keys(),
    )


async def add_clinic(db: DatabaseService) -> uuid.UUID:
    return await create_clinic(db, "Bench clinic")  # in its own scope (migration 0008)


async def count_patients(db: DatabaseService) -> int:
    async def count(session: AsyncSession) -> int:
        return int(await session.scalar(select(func.count()).select_from(Patient)) or 0)

    return await db.execute_read(count)


async def facade_insert(url: str, rows: Sequence[dict[str, Any]], chunk_size: int) -> float:
    """Migrate ``url``, then time one ``execute_batch`` bulk insert; returns seconds.
    On PostgreSQL the facade connects as a provisioned runtime role (row-level security)."""
    await upgrade(url)
    async with AsyncExitStack() as stack:
        runtime = url
        if url.startswith("postgresql"):
            runtime = await stack.enter_async_context(runtime_role(url))
        return await _timed_insert(runtime, rows, chunk_size)


async def _timed_insert(url: str, rows: Sequence[dict[str, Any]], chunk_size: int) -> float:
    async with DatabaseService.connect(settings_for(url)) as db:
        clinic_id = await add_clinic(db)
        async with db.clinic(clinic_id):
            started = time.perf_counter()
            outcome: BatchResult[Any] = await db.execute_batch(
                list(rows), Patient, chunk_size=chunk_size
            )
            elapsed = time.perf_counter() - started
            if not outcome.ok:
                raise RuntimeError(f"bulk insert failed: {outcome.failures[:3]}")
            inserted = await count_patients(db)
    if inserted != len(rows):
        raise RuntimeError(f"expected {len(rows)} rows, found {inserted}")
    return elapsed


def to_records(
    rows: Sequence[dict[str, Any]], names: Sequence[str], clinic_id: uuid.UUID
) -> list[tuple[Any, ...]]:
    now = dt.datetime.now(dt.UTC)
    fill: dict[str, Any] = {
        "clinic_id": clinic_id,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }
    records: list[tuple[Any, ...]] = []
    for row in rows:
        full = {**fill, "id": uuid.uuid4(), **row}
        records.append(tuple(full.get(n) for n in names))
    return records


async def copy_baseline(url: str, rows: Sequence[dict[str, Any]]) -> float:
    """Time building records + ``copy_records_to_table`` into a fresh table; returns seconds."""
    names = [c.name for c in Patient.__table__.columns]
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        clinic_id = await conn.fetchval("SELECT id FROM clinics LIMIT 1")
        await conn.execute(f'CREATE TABLE "{COPY_TABLE}" (LIKE patients INCLUDING ALL)')
        started = time.perf_counter()
        records = to_records(rows, names, clinic_id)
        await conn.copy_records_to_table(COPY_TABLE, records=records, columns=names)
        elapsed = time.perf_counter() - started
        copied = await conn.fetchval(f'SELECT count(*) FROM "{COPY_TABLE}"')
    finally:
        await conn.close()
    if copied != len(rows):
        raise RuntimeError(f"expected {len(rows)} copied rows, found {copied}")
    return elapsed


async def run_postgres(
    args: argparse.Namespace, rows: list[dict[str, Any]]
) -> tuple[list[Run], list[Run], str]:
    facades: list[Run] = []
    copies: list[Run] = []
    pg = ""
    for n in range(args.runs):
        async with throwaway_database(args.pg_url) as url:
            facade = await facade_insert(url, rows, args.chunk_size)
            copy = await copy_baseline(url, rows)
            pg = await postgres_version(url)
        label = "PostgreSQL db.execute_batch(rows, Patient)"
        facades.append(Run("pg_facade", label, len(rows), facade))
        copies.append(
            Run("pg_copy", "PostgreSQL raw asyncpg copy_records_to_table", len(rows), copy)
        )
        print(
            f"  run {n + 1}: execute_batch {len(rows) / facade:,.0f} rows/s, raw COPY "
            f"{len(rows) / copy:,.0f} rows/s, ratio {copy / facade:.2f}",
            flush=True,
        )
    return facades, copies, pg


async def run_sqlite(args: argparse.Namespace, rows: list[dict[str, Any]]) -> Run:
    with tempfile.TemporaryDirectory(prefix="healthdb-bench-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.sqlite3'}"
        seconds = await facade_insert(url, rows, args.chunk_size)
    print(f"  SQLite execute_batch: {len(rows) / seconds:,.0f} rows/s", flush=True)
    return Run("sqlite_facade", "SQLite db.execute_batch(rows, Patient)", len(rows), seconds)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = patient_rows(args.rows)
    facades, copies, pg = await run_postgres(args, rows)
    sqlite_facade = await run_sqlite(args, rows)
    ratios = sorted(f.rows_per_s / c.rows_per_s for f, c in zip(facades, copies, strict=True))
    middle = len(ratios) // 2
    pg_facade = sorted(facades, key=lambda r: r.rows_per_s)[middle]
    pg_copy = sorted(copies, key=lambda r: r.rows_per_s)[middle]
    runs = [pg_facade, pg_copy, sqlite_facade]
    return {
        "benchmark": "batch_insert",
        "timestamp": timestamp(),
        "config": {
            "rows": args.rows,
            "chunk_size": args.chunk_size,
            "pool_size": 10,
            "runs": args.runs,
        },
        "versions": versions(
            postgresql=pg, sqlite=sqlite3.sqlite_version, aiosqlite=aiosqlite.__version__
        ),
        "machine": machine(),
        "runs": [
            {
                "run": r.key,
                "label": r.label,
                "rows": r.rows,
                "seconds": round(r.seconds, 3),
                "rows_per_s": round(r.rows_per_s, 1),
            }
            for r in runs
        ],
        "pg_facade_vs_copy": round(statistics.median(ratios), 3),
        "pg_facade_vs_copy_min_median_max": [
            round(ratios[0], 3),
            round(statistics.median(ratios), 3),
            round(ratios[-1], 3),
        ],
        "pg_runs": [
            {"facade_rows_per_s": round(f.rows_per_s), "copy_rows_per_s": round(c.rows_per_s)}
            for f, c in zip(facades, copies, strict=True)
        ],
        "notes": [
            "COPY baseline: fresh table LIKE patients INCLUDING ALL (constraints and indexes, "
            "no foreign key); its time includes building the records from the same mappings.",
            "execute_batch on PostgreSQL: COPY into a temp staging table per chunk, then "
            "INSERT ... SELECT into patients; on SQLite: a multi-row INSERT per chunk.",
        ],
    }


def render(data: dict[str, Any]) -> str:
    cfg, ver = data["config"], data["versions"]
    load = data["machine"]["loadavg_1_5_15"]
    lines = [
        f"batch_insert: {cfg['rows']:,} Patient rows, chunk_size {cfg['chunk_size']}, "
        f"pool {cfg['pool_size']} | Python {ver['python']}, SQLAlchemy {ver['sqlalchemy']}, "
        f"asyncpg {ver['asyncpg']}, PostgreSQL {ver['postgresql']}, SQLite {ver['sqlite']}",
        "",
        f"{'run':<48} {'seconds':>8} {'rows/s':>10}",
    ]
    for r in data["runs"]:
        lines.append(f"{r['label']:<48} {r['seconds']:>8.2f} {r['rows_per_s']:>10,.0f}")
    low, mid, high = data["pg_facade_vs_copy_min_median_max"]
    lines.append(
        f"\nPostgreSQL execute_batch vs raw COPY over {cfg['runs']} runs: "
        f"min {low:.2f}x, median {mid:.2f}x, max {high:.2f}x (rows above: the median runs)"
    )
    lines += [f"note: {n}" for n in data["notes"]]
    lines.append(f"load average at the end (1/5/15 min): {load}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5, help="PostgreSQL repetitions")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="superuser URL to create DBs")
    parser.add_argument("--output", default="batch_insert.json", help="file name in bench/results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    data = asyncio.run(run(args))
    print()
    print(render(data))
    path = write_json(args.output, data)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
