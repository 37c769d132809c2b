"""Where an audited GET of one patient spends its CPU: each stage measured on its own.

    .venv/bin/python bench/request_budget.py [--ops 5000] [--concurrency 32] [--pg-url URL]

Each stage of ``GET /api/v1/patients/{id}`` (as ``healthdb_api`` runs it) is run ``--ops``
times, ``--concurrency`` at a time, in this process, on a throwaway PostgreSQL database as
the provisioned runtime role (row-level security) with Redis; the figure is this process's
CPU time per operation (user + system, so driver system calls count) and the round trips
each stage makes. The stages, in request order:

  auth          the bearer token, answered from VerifiedTokens (first use: full verify)
  rate limit    one unit charged to the clinic (Redis, leased)
  standing      the user's current role, from the cache
  scope         entering and leaving db.clinic(...)
  query         db.execute_read(patient_views.by_id(...)) with the audit writer off:
                checkout, BEGIN + clinic setting, SELECT, decrypt, mask, record
  audit         the same read with the audit writer on, minus "query": the audit rows of
                concurrent reads written together (one INSERT per flush)
  serialise     the record as the response body (patient_json)
  access log    one access line (buffered)

FastAPI, Starlette and uvicorn's own work per request is what ``bench/http_path.py``'s bare
endpoint costs; the HTTP ratio there is the end-to-end figure. Results go to
``bench/results/request_budget.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from pydantic import SecretStr

from _common import (
    DEFAULT_PG_URL,
    asyncpg_dsn,
    bench_keys,
    machine,
    patient_rows,
    runtime_role,
    throwaway_database,
    timestamp,
    versions,
    write_json,
)
from healthdb import DatabaseService, QueryOptions, Role
from healthdb.migrate import upgrade
from healthdb.models import Clinic, Patient, User
from healthdb.repositories import patient_views
from healthdb_api.access import configure_access_log
from healthdb_api.auth.tokens import Claims, TokenConfig, VerifiedTokens, issue_access
from healthdb_api.deps import _current_role
from healthdb_api.routes.patient_rules import patient_json

REDIS_URL = "redis://127.0.0.1:6379/14"
Op = Callable[[int], Awaitable[object]]


async def cpu_per_op(op: Op, ops: int, concurrency: int) -> tuple[float, float]:
    """(microseconds of this process's CPU per op, ops per second of wall time)."""
    pending = iter(range(ops))

    async def worker() -> None:
        for i in pending:
            await op(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm-up
    pending = iter(range(ops))
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / ops * 1e6, ops / wall


class NoAudit:
    async def write(self, rows: list[dict[str, Any]]) -> None:
        return None

    async def close(self, drain_seconds: float) -> None:
        return None


async def seed(db: DatabaseService) -> tuple[uuid.UUID, uuid.UUID, list[uuid.UUID]]:
    clinic, user = uuid.uuid4(), uuid.uuid4()

    async def add(session: Any) -> None:
        session.add(Clinic(id=clinic, name="Budget clinic"))

    await db.execute_write(add)

    async def add_user(session: Any) -> None:
        session.add(
            User(
                id=user, email="budget@example.org", password_hash="x", full_name="D", role="doctor"
            )
        )

    async with db.clinic(clinic, role=Role.CLINIC_ADMIN):
        await db.execute_write(add_user)
        result = await db.execute_batch(patient_rows(1000), Patient)
        assert result.ok

        async def ids(session: Any) -> list[uuid.UUID]:
            from sqlalchemy import select

            return list((await session.scalars(select(Patient.id))).all())

        patients = await db.execute_read(ids)
    return clinic, user, patients


async def measure(args: argparse.Namespace, owner: str, runtime: str) -> list[dict[str, Any]]:
    from healthdb import Settings

    settings = Settings(
        database_url=runtime,
        redis_url=SecretStr(REDIS_URL),
        rate_limit_per_minute=10_000_000,
        rate_limit_burst=10_000_000,
        **bench_keys(),
    )
    rows: list[dict[str, Any]] = []
    async with DatabaseService.connect(settings) as db:
        clinic, user, patients = await seed(db)
        conn = await asyncpg.connect(asyncpg_dsn(owner))
        await conn.execute("ANALYZE")
        await conn.close()
        config = TokenConfig(secret="b" * 40, issuer="i", audience="a", access_ttl=3600)
        token = issue_access(config, Claims(user, clinic, Role.DOCTOR))
        tokens = VerifiedTokens(config)
        record = None

        async def auth(_i: int) -> object:
            return tokens.decode(token)

        async def rate(_i: int) -> object:
            await db.check_rate_limit(clinic)
            return None

        async def standing(_i: int) -> object:
            return await _current_role(db, clinic, user, "req")

        async def scope(_i: int) -> object:
            async with db.clinic(clinic, actor=user, role=Role.DOCTOR, request_id="req"):
                return None

        async def read(i: int) -> object:
            nonlocal record
            async with db.clinic(clinic, actor=user, role=Role.DOCTOR, request_id="req"):
                record = await db.execute_read(
                    patient_views.by_id(patients[i % len(patients)]),
                    QueryOptions.for_phi("patients.get"),
                )
            return record

        async def serialise(_i: int) -> object:
            assert record is not None
            return patient_json(record)

        sink = io.StringIO()
        configure_access_log(json_lines=True, stream=sink)
        from healthdb_api.access import _batched

        batch = _batched()
        assert batch is not None

        async def log(i: int) -> object:
            batch.add(
                {
                    "method": "GET",
                    "route": "/api/v1/patients/{patient_id}",
                    "status": 200,
                    "duration_ms": 1.0,
                    "request_id": "r",
                    "clinic_id": str(clinic),
                }
            )
            return None

        def add(stage: str, trips: str, figures: tuple[float, float]) -> None:
            cpu, rate_ = figures
            rows.append({"stage": stage, "round_trips": trips, "cpu_us": round(cpu, 1),
                         "ops_per_s": round(rate_)})  # fmt: skip
            print(f"  {stage:<12} {cpu:8.1f} us  {rate_:9,.0f} ops/s", flush=True)

        n, c = args.ops, args.concurrency
        add("auth", "0", await cpu_per_op(auth, n, c))
        add("rate limit", "1 per lease", await cpu_per_op(rate, n, c))
        add("standing", "0 (cache)", await cpu_per_op(standing, n, c))
        add("scope", "0", await cpu_per_op(scope, n, c))
        writer = db.audit_writer
        db.audit_writer = NoAudit()  # type: ignore[assignment]
        query = await cpu_per_op(read, n, c)
        db.audit_writer = writer
        audited = await cpu_per_op(read, n, c)
        flushes = writer.flushes
        add("query", "2", query)
        trips = f"3 per flush ({writer.rows / max(flushes, 1):.1f} rows/flush)"
        add("audit", trips, (audited[0] - query[0], audited[1]))
        add("serialise", "0", await cpu_per_op(serialise, n, c))
        add("access log", "0", await cpu_per_op(log, n, c))
    return rows


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with throwaway_database(args.pg_url, prefix="bench_budget") as owner:
        await upgrade(owner)
        async with runtime_role(owner) as runtime:
            stages = await measure(args, owner, runtime)
    total = sum(s["cpu_us"] for s in stages)
    return {
        "benchmark": "request_budget",
        "timestamp": timestamp(),
        "config": {"ops": args.ops, "concurrency": args.concurrency},
        "versions": versions(),
        "machine": machine(),
        "stages": stages,
        "total_cpu_us": round(total, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    data = asyncio.run(run(args))
    print(f"\nlibrary and service stages, total {data['total_cpu_us']:.0f} us of CPU per GET")
    print(f"wrote {write_json('request_budget.json', data)}")


if __name__ == "__main__":
    main()
