"""Primary-key read throughput through seven paths, as ratios against raw asyncpg (same run).

    .venv/bin/python bench/read_path.py [--seconds 5] [--concurrency 64] [--pool 10]
                                        [--rows 1000] [--pg-url URL] [--paths a,b,c,d,e]

Paths:
  (a) raw asyncpg ``pool.fetchrow`` (the baseline every ratio is against);
  (b) plain SQLAlchemy ORM ``AsyncSession.get``;
  (c) ``db.execute_read(lambda s: s.get(Patient, pid), QueryOptions.for_phi())``: the ORM
      path, audited (read-only transaction, audit row through the group-commit writer);
  (d) ``db.execute_read`` with ``.cached(keys.for_patient(...))`` of a non-PHI column (the
      row's version), served from the cache — PHI itself is never cached;
  (e) plain ORM in a transaction with ``set_config('app.clinic_id', ..., true)`` (naive RLS);
  (f) ``db.execute_read(patient_views.by_id(pid), QueryOptions.for_phi())``: the library's
      read path for PHI (a view: Core, no ORM), masked and audited through the group-commit
      writer before it returns;
  (g) (f) with the audit writer replaced by one that writes nothing (bench only): the
      audit cost is f/g.

Every figure is measured in this run, on a throwaway database that is dropped at the end.
After each timed run, a short sequential pass counts round trips per read: SQLAlchemy cursor
executes (``before_cursor_execute``) plus the driver calls SQLAlchemy does not report as
cursor executes (BEGIN, COMMIT, ROLLBACK, the pool pre-ping, asyncpg's pool reset), seen
through asyncpg query loggers on every pooled connection. ``BEGIN ...; set_config`` is one
message and one round trip: the facade sends its transaction-local settings (and, for units
that always audit, the audit lane lock) with BEGIN.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

from _common import (
    DEFAULT_PG_URL,
    asyncpg_dsn,
    bench_keys,
    machine,
    patient_rows,
    percentile,
    postgres_version,
    runtime_role,
    throwaway_database,
    timestamp,
    versions,
    write_json,
)
from healthdb import BatchResult, DatabaseService, QueryOptions, Settings, keys
from healthdb.clinics import create_clinic
from healthdb.migrate import upgrade
from healthdb.models import Patient
from healthdb.phi.crypto import Keyring, using_keyring
from healthdb.repositories import patient_views

ReadOp = Callable[[uuid.UUID], Awaitable[object]]
QueryLogger = Callable[[Any], None]
Detach = Callable[[], None]
WireTap = Callable[[QueryLogger], Awaitable[Detach]]
ALL_PATHS = "abcdefg"
SET_CLINIC = text("SELECT set_config('app.clinic_id', :c, true)")


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    ops: int
    seconds: float
    latencies_ms: list[float]  # sorted

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 0.99)


@dataclass(frozen=True, slots=True)
class Trips:
    """Statements seen over ``reads`` sequential reads."""

    reads: int
    cursor: Counter[str] | None  # None: not a SQLAlchemy path
    driver: Counter[str]  # driver-level calls asyncpg logs (not the prepared SELECTs)

    @property
    def cursor_per_read(self) -> float | None:
        return None if self.cursor is None else self.cursor.total() / self.reads

    @property
    def wire(self) -> Counter[str]:
        return self.driver + (self.cursor or Counter())

    @property
    def wire_per_read(self) -> float:
        return self.wire.total() / self.reads

    def breakdown(self) -> dict[str, float]:
        return {k: round(v / self.reads, 2) for k, v in self.wire.most_common()}


@dataclass(slots=True)
class PathResult:
    key: str
    label: str
    timing: Timing
    trips: Trips
    extra: dict[str, Any] = field(default_factory=dict)


# -- the paths ------------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    key: str
    label: str
    read: ReadOp
    tap: WireTap
    engine: AsyncEngine | None = None  # whose cursor executes are counted
    prepare: Callable[[Sequence[uuid.UUID]], Awaitable[None]] | None = None
    cache_counts: Callable[[], tuple[int, int]] | None = None  # (hits, misses)
    restore: Callable[[], None] | None = None  # undo what prepare changed


def _attach_all(connections: Sequence[Any], callback: QueryLogger) -> Detach:
    for conn in connections:
        conn.add_query_logger(callback)

    def detach() -> None:
        for conn in connections:
            conn.remove_query_logger(callback)

    return detach


def sqlalchemy_tap(engine: AsyncEngine, pool_size: int) -> WireTap:
    """Check out every pooled connection once and attach the logger to its asyncpg driver."""

    async def attach(callback: QueryLogger) -> Detach:
        async with AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(engine.connect()) for _ in range(pool_size)]
            drivers = [(await c.get_raw_connection()).driver_connection for c in conns]
        return _attach_all(drivers, callback)

    return attach


def patient_sql() -> str:
    columns = ", ".join(f'"{c.name}"' for c in Patient.__table__.columns)
    return f"SELECT {columns} FROM patients WHERE id = $1"


@asynccontextmanager
async def raw_asyncpg(url: str, pool_size: int) -> AsyncIterator[list[Target]]:
    created: list[Any] = []

    async def remember(conn: Any) -> None:  # runs once per new connection, not per query
        created.append(conn)

    pool = await asyncpg.create_pool(
        asyncpg_dsn(url), min_size=pool_size, max_size=pool_size, init=remember
    )
    sql = patient_sql()

    async def read(pid: uuid.UUID) -> object:
        return await pool.fetchrow(sql, pid)

    async def tap(callback: QueryLogger) -> Detach:
        return _attach_all(list(created), callback)

    try:
        yield [Target("a", "raw asyncpg pool.fetchrow", read, tap)]
    finally:
        await pool.close()


@asynccontextmanager
async def plain_orm(
    url: str, pool_size: int, clinic_id: uuid.UUID, keyring: Keyring
) -> AsyncIterator[list[Target]]:
    engine = sa_create_async_engine(url, pool_size=pool_size, max_overflow=0)
    sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
    clinic = str(clinic_id)

    # The SSN column decrypts on load, as it does through the facade.
    async def get(pid: uuid.UUID) -> object:
        with using_keyring(keyring):
            async with sessions() as s:
                return await s.get(Patient, pid)

    async def naive(pid: uuid.UUID) -> object:
        with using_keyring(keyring):
            async with sessions() as s, s.begin():
                await s.execute(SET_CLINIC, {"c": clinic})
                return await s.get(Patient, pid)

    tap = sqlalchemy_tap(engine, pool_size)
    try:
        yield [
            Target("b", "SQLAlchemy ORM session.get", get, tap, engine),
            Target("e", "ORM txn + set_config (naive RLS)", naive, tap, engine),
        ]
    finally:
        await engine.dispose()


def facade_targets(db: DatabaseService, clinic_id: uuid.UUID, pool_size: int) -> list[Target]:
    def read_with(options: QueryOptions) -> ReadOp:
        async def read(pid: uuid.UUID) -> object:
            async with db.clinic(clinic_id, role="doctor", purpose="bench"):
                return await db.execute_read(lambda s: s.get(Patient, pid), options)

        return read

    async def view_read(pid: uuid.UUID) -> object:
        async with db.clinic(clinic_id, role="doctor", purpose="bench"):
            return await db.execute_read(patient_views.by_id(pid), phi)

    async def version(session: AsyncSession, pid: uuid.UUID) -> int | None:
        stmt = select(Patient.version).where(Patient.id == pid)
        found: int | None = (await session.execute(stmt)).scalar_one_or_none()
        return found

    async def cached(pid: uuid.UUID) -> object:
        # PHI is never cached (a hit would be an unaudited read): cache a non-PHI column.
        options = QueryOptions.for_read().cached(keys.for_patient(clinic_id, pid))
        async with db.clinic(clinic_id):
            return await db.execute_read(lambda s: version(s, pid), options)

    async def fill(ids: Sequence[uuid.UUID]) -> None:
        await run_each(cached, ids, concurrency=pool_size)

    def counts() -> tuple[int, int]:
        return db.cache.store.hits, db.cache.store.misses

    writer = db.audit_writer

    async def audit_off(_ids: Sequence[uuid.UUID]) -> None:
        db.audit_writer = NoAudit()  # type: ignore[assignment]  # bench only

    def audit_on() -> None:
        db.audit_writer = writer

    engine = db.engines.primary
    tap = both_taps(sqlalchemy_tap(engine, pool_size), driver_tap(db, pool_size))
    phi = QueryOptions.for_phi("bench.phi")
    return [
        Target("c", "ORM session.get, for_phi, audited", read_with(phi), tap, engine),
        Target("d", "db.execute_read .cached() non-PHI (hit)", cached, tap, engine, fill, counts),
        Target("f", "view by_id, for_phi, audited", view_read, tap, engine),
        Target(
            "g",
            "view by_id, for_phi, audit writer off",
            view_read,
            tap,
            engine,
            audit_off,
            restore=audit_on,
        ),
    ]


class NoAudit:
    """Bench only: an audit writer that writes nothing, so (g) is (f) without the audit."""

    async def write(self, rows: list[dict[str, Any]]) -> None:
        return None

    async def close(self, drain_seconds: float) -> None:
        return None


def driver_tap(db: DatabaseService, pool_size: int) -> WireTap:
    """Check out every connection of the facade's driver pool once and attach the logger."""

    async def attach(callback: QueryLogger) -> Detach:
        pool = db.engines.driver
        if pool is None:
            return lambda: None
        async with AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(pool.connection()) for _ in range(pool_size)]
        return _attach_all(conns, callback)

    return attach


def both_taps(*taps: WireTap) -> WireTap:
    async def attach(callback: QueryLogger) -> Detach:
        detaches = [await tap(callback) for tap in taps]

        def detach() -> None:
            for undo in detaches:
                undo()

        return detach

    return attach


# -- measuring ------------------------------------------------------------------------------


async def run_each(read: ReadOp, ids: Sequence[uuid.UUID], *, concurrency: int) -> None:
    """Read every id once, ``concurrency`` at a time."""
    pending = iter(ids)

    async def worker() -> None:
        for pid in pending:
            await read(pid)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def drive(
    read: ReadOp, ids: Sequence[uuid.UUID], *, seconds: float, concurrency: int
) -> Timing:
    """``concurrency`` tasks read random ids until ``seconds`` have passed."""
    latencies: list[float] = []
    clock = time.perf_counter
    deadline = clock() + seconds

    async def worker(seed: int) -> None:
        choose = random.Random(seed).choice
        while clock() < deadline:
            pid = choose(ids)
            started = clock()
            await read(pid)
            latencies.append((clock() - started) * 1000)

    started = clock()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = clock() - started
    latencies.sort()
    return Timing(len(latencies), elapsed, latencies)


def classify(sql: str) -> str:
    """A short, parameter-free label for a statement."""
    flat = " ".join(sql.split()).strip().rstrip(";").strip()
    upper = flat.upper()
    if not flat:
        return "';' (pre-ping)"
    if upper.startswith("SELECT PG_ADVISORY_UNLOCK_ALL"):
        return "asyncpg pool reset"
    if upper.startswith("COMMIT; BEGIN") and "SET_CONFIG" in upper:
        # The previous read-only transaction's deferred COMMIT, sent with this BEGIN.
        return "COMMIT; " + upper.split(";")[1].strip() + "; set_config"
    if upper.startswith("INSERT INTO AUDIT_EVENTS"):
        return "INSERT audit rows (group commit, shared)"
    if upper.startswith("BEGIN") and "SET_CONFIG" in upper:
        # One message: BEGIN with the transaction-local settings (and the audit lane lock).
        lock = " + lane lock" if "PG_TRY_ADVISORY_XACT_LOCK" in upper else ""
        return upper.split(";")[0] + "; set_config" + lock
    if "HEALTHDB.AUDIT_LANE" in upper:
        return "SELECT claimed lane + chain head"
    if "SET_CONFIG" in upper:
        return "SELECT set_config"
    if upper.startswith("SELECT") and "FROM PATIENTS" in upper:
        return "SELECT patients"
    return upper[:40]


async def count_trips(target: Target, ids: Sequence[uuid.UUID], reads: int) -> Trips:
    """Run ``reads`` sequential reads with statement counters attached, then detach them."""
    driver: Counter[str] = Counter()
    cursor: Counter[str] = Counter()

    def on_query(record: Any) -> None:
        driver[classify(record.query)] += 1

    def on_cursor(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        cursor[classify(statement)] += 1

    detach = await target.tap(on_query)
    sync_engine = target.engine.sync_engine if target.engine else None
    if sync_engine is not None:
        event.listen(sync_engine, "before_cursor_execute", on_cursor)
    try:
        await asyncio.sleep(0.05)  # let loggers of the attach step itself fire, then forget them
        driver.clear()
        cursor.clear()
        choose = random.Random(1).choice
        for _ in range(reads):
            await target.read(choose(ids))
        await asyncio.sleep(0.05)  # asyncpg delivers log records with call_soon
    finally:
        detach()
        if sync_engine is not None:
            event.remove(sync_engine, "before_cursor_execute", on_cursor)
    return Trips(reads, cursor if sync_engine is not None else None, Counter(driver))


async def measure(target: Target, ids: Sequence[uuid.UUID], args: argparse.Namespace) -> PathResult:
    try:
        return await _measure(target, ids, args)
    finally:
        if target.restore is not None:
            target.restore()


async def _measure(
    target: Target, ids: Sequence[uuid.UUID], args: argparse.Namespace
) -> PathResult:
    if target.prepare is not None:
        await target.prepare(ids)
    await drive(target.read, ids, seconds=args.warmup, concurrency=args.concurrency)
    before = target.cache_counts() if target.cache_counts else None
    timing = await drive(target.read, ids, seconds=args.seconds, concurrency=args.concurrency)
    result = PathResult(target.key, target.label, timing, Trips(1, None, Counter()))
    if target.cache_counts is not None and before is not None:
        hits, misses = (now - then for now, then in zip(target.cache_counts(), before, strict=True))
        result.extra["cache_hit_ratio"] = round(hits / max(1, hits + misses), 4)
    result.trips = await count_trips(target, ids, args.count_reads)
    print(f"  measured ({target.key}) {target.label}: {timing.ops_per_s:,.0f} ops/s", flush=True)
    return result


# -- setup ----------------------------------------------------------------------------------


async def seed(db: DatabaseService, rows: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """One clinic and ``rows`` patients, through the facade; returns their ids."""
    clinic_id = await create_clinic(db, "Bench clinic")  # in its own scope (migration 0008)

    async def patient_ids(session: AsyncSession) -> list[uuid.UUID]:
        return list((await session.scalars(select(Patient.id))).all())

    async with db.clinic(clinic_id):
        outcome: BatchResult[Any] = await db.execute_batch(patient_rows(rows), Patient)
        if not outcome.ok:
            raise RuntimeError(f"seeding failed: {outcome.failures[:3]}")
        ids = await db.execute_read(patient_ids)
    if len(ids) != rows:
        raise RuntimeError(f"expected {rows} patients, found {len(ids)}")
    return clinic_id, ids


async def analyze(owner_url: str) -> None:
    """Planner statistics after the bulk load (as autovacuum would, eventually): with none,
    a by-id read that also names the clinic may scan the clinic's index instead of the key."""
    conn = await asyncpg.connect(asyncpg_dsn(owner_url))
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def facade_settings(url: str, args: argparse.Namespace) -> Settings:
    return Settings(
        database_url=url,
        pool_size=args.pool,
        max_overflow=0,
        slow_query_ms=10_000,
        cache_ttl=3600,  # (d) must stay a cache hit for the whole run
        cache_max_entries=max(10_000, args.rows),
        **bench_keys(),
    )


async def run_paths(
    url: str,
    runtime: str,
    db: DatabaseService,
    clinic_id: uuid.UUID,
    ids: list[uuid.UUID],
    args: Any,
) -> list[PathResult]:
    """(a) and (b) read as the owner (no row-level security: the raw baselines); (c), (d)
    and (e) as the runtime role, which forced row-level security binds."""
    wanted = set(args.paths)
    results: list[PathResult] = []
    groups: list[tuple[str, Callable[[], AbstractAsyncContextManager[list[Target]]]]] = [
        ("a", lambda: raw_asyncpg(url, args.pool)),
        ("b", lambda: plain_orm(url, args.pool, clinic_id, db.keyring)),
        ("e", lambda: plain_orm(runtime, args.pool, clinic_id, db.keyring)),
    ]
    for keys_, make in groups:
        if wanted & set(keys_):
            async with make() as targets:
                for target in targets:
                    if target.key in wanted and target.key in keys_:
                        results.append(await measure(target, ids, args))
    for target in facade_targets(db, clinic_id, args.pool):
        if target.key in wanted:
            results.append(await measure(target, ids, args))
    return sorted(results, key=lambda r: r.key)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with throwaway_database(args.pg_url) as url:
        await upgrade(url)
        async with runtime_role(url) as runtime:
            settings = facade_settings(runtime, args)
            async with DatabaseService.connect(settings) as db:
                clinic_id, ids = await seed(db, args.rows)
                await analyze(url)
                print(f"seeded 1 clinic, {len(ids)} patients; measuring...", flush=True)
                results = await run_paths(url, runtime, db, clinic_id, ids, args)
        pg = await postgres_version(url)
    return payload(results, args, settings, pg)


# -- output ---------------------------------------------------------------------------------

NOTES = [
    "BEGIN/COMMIT/ROLLBACK (and the pool pre-ping) are not cursor executes in SQLAlchemy, so "
    "before_cursor_execute never sees them: 'statements/read' undercounts round trips. "
    "'wire/read' adds them, as logged by asyncpg query loggers on every pooled connection.",
    "Round trips are counted over a separate sequential pass after each timed run; the timed "
    "runs carry no counters.",
    "(c) and (d) enter db.clinic(...) per read, like a request handler would.",
    "(d) never suspends on a cache hit, so one task does all the work: concurrency is moot there.",
    "(a) and (b) connect as the owner (superuser: no row-level security); (c), (d) and (e) as "
    "a provisioned runtime role, bound by forced row-level security on every tenant table.",
]


def payload(
    results: list[PathResult], args: argparse.Namespace, settings: Settings, pg: str
) -> dict[str, Any]:
    base = next((r.timing.ops_per_s for r in results if r.key == "a"), None)
    rate = {r.key: r.timing.ops_per_s for r in results}
    audit_cost = (
        {"f_over_g": round(rate["f"] / rate["g"], 3)} if rate.get("g") and "f" in rate else None
    )
    return {
        "audit_cost": audit_cost,
        "benchmark": "read_path",
        "timestamp": timestamp(),
        "config": {
            "seconds": args.seconds,
            "warmup_seconds": args.warmup,
            "concurrency": args.concurrency,
            "pool": args.pool,
            "rows": args.rows,
            "count_reads": args.count_reads,
            "facade_pool_pre_ping": settings.pool_pre_ping,
            "plain_sqlalchemy_pool_pre_ping": False,
        },
        "versions": versions(postgresql=pg),
        "machine": machine(),
        "paths": [
            {
                "path": r.key,
                "label": r.label,
                "ops": r.timing.ops,
                "seconds": round(r.timing.seconds, 3),
                "ops_per_s": round(r.timing.ops_per_s, 1),
                "ratio_vs_a": round(r.timing.ops_per_s / base, 3) if base else None,
                "p50_ms": round(r.timing.p50, 3),
                "p99_ms": round(r.timing.p99, 3),
                "cursor_executes_per_read": r.trips.cursor_per_read,
                "round_trips_per_read": r.trips.wire_per_read,
                "round_trip_breakdown": r.trips.breakdown(),
                **r.extra,
            }
            for r in results
        ],
        "notes": NOTES,
    }


def render(data: dict[str, Any]) -> str:
    cfg, ver = data["config"], data["versions"]
    load = data["machine"]["loadavg_1_5_15"]
    lines = [
        f"read_path: {cfg['concurrency']} tasks, pool {cfg['pool']}, {cfg['rows']} rows, "
        f"{cfg['seconds']} s per path after {cfg['warmup_seconds']} s warm-up | "
        f"Python {ver['python']}, SQLAlchemy {ver['sqlalchemy']}, asyncpg {ver['asyncpg']}, "
        f"PostgreSQL {ver['postgresql']}",
        "",
        f"{'path':<42} {'ops/s':>9} {'vs (a)':>7} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for p in data["paths"]:
        ratio = f"{p['ratio_vs_a']:.2f}x" if p["ratio_vs_a"] is not None else "n/a"
        lines.append(
            f"({p['path']}) {p['label']:<38} {p['ops_per_s']:>9,.0f} {ratio:>7} "
            f"{p['p50_ms']:>8.2f} {p['p99_ms']:>8.2f}"
        )
    lines += ["", f"Round trips per read ({cfg['count_reads']} sequential reads per path):"]
    lines.append(f"{'path':<5} {'statements/read':>15} {'wire/read':>9}  breakdown per read")
    for p in data["paths"]:
        stmts = p["cursor_executes_per_read"]
        shown = "-" if stmts is None else f"{stmts:.2f}"
        parts = ", ".join(f"{k} {v:g}" for k, v in p["round_trip_breakdown"].items()) or "none"
        lines.append(f"({p['path']})  {shown:>15} {p['round_trips_per_read']:>9.2f}  {parts}")
    hit = next((p.get("cache_hit_ratio") for p in data["paths"] if p["path"] == "d"), None)
    if hit is not None:
        lines.append(f"(d) cache hit ratio during the timed run: {hit:.2%}")
    audit = data.get("audit_cost")
    if audit is not None:
        lines.append(
            f"audit on vs off, same for_phi read: (f)/(g) = {audit['f_over_g']:.2f}x throughput"
        )
    lines.append(f"facade pool_pre_ping={cfg['facade_pool_pre_ping']} (Settings default)")
    lines += ["", *(f"note: {n}" for n in data["notes"])]
    lines.append(f"load average at the end (1/5/15 min): {load}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per path")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per path")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--count-reads", type=int, default=200, help="reads per round-trip count")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="superuser URL to create DBs")
    parser.add_argument("--paths", default=ALL_PATHS, help="subset of 'abcdefg' to run")
    parser.add_argument("--output", default="read_path.json", help="file name in bench/results")
    args = parser.parse_args(argv)
    if not set(args.paths) <= set(ALL_PATHS):
        parser.error("--paths takes letters from 'abcdefg'")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    data = asyncio.run(run(args))
    print()
    print(render(data))
    path = write_json(args.output, data)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
