"""DatabaseService: the facade, and the one place where the internals are wired together."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase

from healthdb import health
from healthdb.cache import MISS, MemoryCache
from healthdb.command import Command
from healthdb.context import ClinicScope, Role, as_uuid, clinic_scope, current_scope
from healthdb.engine import Engines, Sessions, create_engines
from healthdb.errors import (
    ClinicContextRequired,
    DatabaseUnavailable,
    InvalidInput,
    ServiceClosed,
    UnsafeDatabaseRole,
)
from healthdb.health import HealthReport, PoolStatus
from healthdb.internal import (
    change_audit,
    connection_wall,
    isolation,
    phi_access,
    query_cache,
    rls,
)
from healthdb.internal.audit.flush import postgres_flush, session_flush
from healthdb.internal.audit.writer import AuditWriter, Flush
from healthdb.internal.invalidation import InvalidationBus
from healthdb.internal.metrics import LatencySummary, QueryMetrics
from healthdb.internal.optimizer import SlowQueryLog, SlowStatement
from healthdb.internal.query_cache import QueryCache
from healthdb.internal.rate_limit import ClinicRateLimiter, LocalGcra, RedisGcra
from healthdb.internal.retry import log_retry, retrying, translate
from healthdb.models.base import is_tenant
from healthdb.models.clinic import Clinic
from healthdb.phi.crypto import Keyring, using_keyring
from healthdb.phi.keys import keyring_for
from healthdb.query import batch, middleware, raw
from healthdb.query.batch import BatchResult
from healthdb.query.options import LockMode, QueryOptions, ReadStrategy, TransactionOptions
from healthdb.query.pipeline import Call, CallKind, Handler, Middleware, Operation, chain
from healthdb.query.read_unit import read_unit
from healthdb.query.strategies import optimistic, unit_of_work
from healthdb.query.write_unit import write_unit
from healthdb.settings import Settings
from healthdb.view import Read

T = TypeVar("T")
Item = TypeVar("Item")
log = structlog.get_logger("healthdb")
MAX_CONCURRENCY = 500
#: Bulk-insert chunks in flight at once (measured on 2 cores: 10 was slower than 4).
BULK_CONCURRENCY = 4


class DatabaseService:
    """The public entry point. Build it with :meth:`connect`; close it with :meth:`close`."""

    def __init__(
        self,
        *,
        settings: Settings,
        engines: Engines,
        cache: QueryCache,
        metrics: QueryMetrics,
        slow_log: SlowQueryLog,
        bus: InvalidationBus | None = None,
        middleware_steps: Sequence[Middleware] | None = None,
        rate_limiter: ClinicRateLimiter | None = None,
        audit_writer: AuditWriter | None = None,
        keyring: Keyring,
    ) -> None:
        self.settings = settings
        self.keyring = keyring
        self.engines = engines
        self.cache = cache
        self.metrics = metrics
        self.slow_log = slow_log
        self.bus = bus
        self.rate_limiter = rate_limiter or _rate_limiter(settings, metrics, self._rate_override)
        isolation.install(isolation.TenantSession)
        query_cache.install(isolation.TenantSession)
        phi_access.install(isolation.TenantSession)
        change_audit.install(isolation.TenantSession)  # writes to clinics, users, settings
        for engine in (engines.primary, engines.critical):
            connection_wall.install(engine.sync_engine)
        self._sessions = Sessions.for_engine(engines.primary, session_class=isolation.TenantSession)
        self.audit_writer = audit_writer or AuditWriter(flush=self._audit_flush())
        self._critical_sessions = Sessions.for_engine(
            engines.critical, session_class=isolation.TenantSession
        )
        steps = middleware_steps if middleware_steps is not None else self._default_steps()
        self._handle: Handler = chain(steps, self._endpoint)
        self._closed = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- construction -------------------------------------------------------------------

    @classmethod
    def connect(cls, settings: Settings | None = None) -> _Connecting:
        """``await DatabaseService.connect(s)`` or ``async with DatabaseService.connect(s)``."""
        return _Connecting(settings or Settings())

    @classmethod
    async def _open(cls, settings: Settings) -> DatabaseService:
        keyring = keyring_for(settings)  # before any pool opens: no keys, no service
        engines = create_engines(settings)
        metrics = QueryMetrics()
        slow_log = SlowQueryLog(
            threshold_ms=settings.slow_query_ms,
            size=settings.slow_query_log_size,
            explain=settings.explain_slow_queries,
            on_slow=lambda _r: metrics.slow.inc(),
        )
        slow_log.attach(engines.primary)
        slow_log.attach(engines.critical)
        store = MemoryCache(max_entries=settings.cache_max_entries)
        cache = QueryCache(store=store, default_ttl=settings.cache_ttl)
        bus = _invalidation_bus(settings, cache)
        db = cls(
            settings=settings,
            engines=engines,
            cache=cache,
            metrics=metrics,
            slow_log=slow_log,
            bus=bus,
            keyring=keyring,
        )
        try:
            await db.ping()
            if engines.is_postgres and settings.enforce_safe_role:
                await db._verify_database_wall()
            if bus is not None:
                await bus.start()
        except BaseException:
            await db.close()
            raise
        return db

    async def _verify_database_wall(self) -> None:
        """Refuse to run on PostgreSQL as a role that row-level security does not bind."""
        try:
            async with self.engines.primary.connect() as conn:
                await rls.verify_database_wall(conn)
        except UnsafeDatabaseRole:
            raise
        except Exception as exc:
            raise translate(exc) from exc

    def _audit_flush(self) -> Flush:
        if self.engines.driver is not None:
            return postgres_flush(
                self.engines.driver,
                lanes=self.settings.audit_lanes,
                clinic_setting=rls.CLINIC_SETTING,
            )
        return session_flush(self._sessions.write)

    def _default_steps(self) -> list[Middleware]:
        s = self.settings
        return [
            middleware.checked,
            middleware.observed(self.metrics, s.slow_query_ms),
            middleware.cached(self.cache, self.metrics),
            middleware.retried(
                retrying(attempts=s.retry_attempts, max_wait=s.retry_max_wait), self.metrics
            ),
        ]

    # -- scope --------------------------------------------------------------------------

    def clinic(
        self,
        clinic_id: uuid.UUID | str,
        *,
        actor: uuid.UUID | str | None = None,
        role: Role | str | None = None,
        purpose: str = "operations",
        request_id: str | None = None,
        client_addr: str | None = None,
    ) -> AbstractAsyncContextManager[ClinicScope]:
        """``async with db.clinic(cid, actor=..., role=...)``: scope the enclosed calls."""
        return clinic_scope(
            clinic_id,
            actor=actor,
            role=role,
            purpose=purpose,
            request_id=request_id,
            client_addr=client_addr,
        )

    # -- the six operations -------------------------------------------------------------

    async def execute_read(
        self, op: Operation[T] | Read[T], options: QueryOptions | None = None
    ) -> T:
        """Run ``op`` in a read-only transaction (primary, or cached when ``options.cached``).

        ``op`` is an operation (an async callable taking the session) or a bound view
        (:class:`~healthdb.view.View`): a Core read mapped straight into records,
        without the ORM, masked and audited the same way."""
        options = options or QueryOptions.for_read()
        if options.read_strategy is ReadStrategy.CACHED and options.cache_key is not None:
            hit = self._cached(options)
            if hit is not MISS:
                return cast(T, hit)
        result: T = await self._run(CallKind.READ, op, options)
        return result

    def _cached(self, options: QueryOptions) -> object:
        """A fresh cached value in the current scope's partition, or MISS. A hit costs no
        round trip, so it skips the chain; it is counted and timed all the same."""
        self._check_open()
        started = time.perf_counter()
        scope = current_scope()
        partition = f"{scope.clinic_id}:{scope.role.value}" if scope else "-"
        assert options.cache_key is not None
        value = self.cache.get(options.cache_key, partition=partition)
        if value is not MISS:
            self.metrics.cache_hits.inc()
            self.metrics.observe(
                operation=options.name,
                kind=CallKind.READ.value,
                strategy="cache_hit",
                outcome="ok",
                seconds=time.perf_counter() - started,
            )
        return value

    async def execute_write(
        self, op: Operation[T] | Command[T], options: QueryOptions | None = None
    ) -> T:
        """Run ``op`` in a write transaction on the primary; commit; invalidate cached reads.

        ``op`` is an operation (an async callable taking the session) or a bound command
        (:class:`~healthdb.command.RowUpdate`): an update without the ORM, audited in its
        own transaction the same way."""
        options = options or QueryOptions.for_write()
        kind = CallKind.CRITICAL if options.emergency else CallKind.WRITE
        if kind is CallKind.CRITICAL:
            raise InvalidInput("emergency writes go through execute_critical(op, reason=...)")
        result: T = await self._run(kind, op, options)
        return result

    async def execute_transaction(
        self, op: Operation[T], options: TransactionOptions | None = None
    ) -> T:
        """Run ``op`` with explicit isolation/locking; transient failures are re-run."""
        result: T = await self._run(CallKind.TRANSACTION, op, options or TransactionOptions())
        return result

    async def execute_with_clinic_context(
        self,
        clinic_id: uuid.UUID | str,
        op: Operation[T],
        *,
        actor: uuid.UUID | str | None = None,
        role: Role | str | None = None,
        purpose: str = "operations",
        options: TransactionOptions | None = None,
    ) -> T:
        """Run ``op`` as a transaction inside a clinic scope, charged to the clinic's request
        budget first (:meth:`check_rate_limit`: :class:`RateLimited` over it, ``op`` not run)."""
        with clinic_scope(clinic_id, actor=actor, role=role, purpose=purpose) as scope:
            await self.check_rate_limit(scope.clinic_id)
            return await self.execute_transaction(op, options)

    async def execute_batch(
        self,
        items: Sequence[Any],
        op: Callable[[AsyncSession, Any], Awaitable[T]] | type[DeclarativeBase],
        *,
        concurrency: int = 50,
        chunk_size: int | None = None,
        name: str = "batch",
        on_progress: Callable[[int], None] | None = None,
    ) -> BatchResult[T]:
        """Run ``op(session, item)`` for every item, or bulk-insert mappings into a model.

        Chunks of ``chunk_size`` items share a transaction; at most ``concurrency`` chunks
        run at once. Every failed item is listed in the result with its reason.
        """
        self._check_open()
        items = _check_items(items, self.settings.batch_max_items)
        if not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
            raise InvalidInput(f"concurrency must be an int in 1..{MAX_CONCURRENCY}")
        options = QueryOptions.for_write().named(name).batch()
        if isinstance(op, type):
            if not issubclass(op, DeclarativeBase):
                raise InvalidInput("a bulk insert needs a mapped model class")
            return await self._bulk_insert(items, op, options, concurrency, chunk_size, on_progress)
        if not callable(op):
            raise InvalidInput("op must be an async callable (session, item) or a model class")
        size = _chunk(chunk_size, 1)

        async def run_unit(unit: Operation[Any]) -> Any:
            return await self._run(CallKind.WRITE, unit, options)

        return await batch.run_batch(
            items,
            op,
            run_unit=run_unit,
            concurrency=concurrency,
            chunk_size=size,
            translate=translate,
            on_progress=None if on_progress is None else lambda done: on_progress(len(done)),
        )

    async def execute_critical(self, op: Operation[T], *, reason: str) -> T:
        """The break-glass lane: its own reserved pool, a mandatory reason, elevated logging.

        It stays inside the caller's clinic scope; it widens capacity, never tenancy.
        """
        options = QueryOptions.for_emergency().named("critical")
        result: T = await self._run(CallKind.CRITICAL, op, options, reason=reason)
        return result

    async def execute_raw(
        self,
        sql: str,
        params: Mapping[str, object] | None = None,
        *,
        reason: str,
        read_only: bool = True,
    ) -> list[dict[str, object]]:
        """The audited escape hatch: run one parameterised SQL statement the ORM cannot express.

        ``sql`` takes values only as ``:name`` parameters (``params``); it must pass the SQL
        guard (:mod:`healthdb.internal.sql_guard`: one statement, no comments, no inline
        literals in predicates, no DDL, only SELECT when ``read_only``). It needs a clinic
        scope and a ``reason`` of 1-500 characters, runs through the normal middleware chain
        as a read (``read_only``) or a write, and logs a ``raw_sql`` security event: clinic,
        actor, reason length and a sha256 fingerprint of the normalised statement, never the
        parameters. Returns the rows as dicts (empty for statements that return none).

        Tenancy: on PostgreSQL the statement runs under row-level security with the
        transaction's clinic, so it sees and writes only the scope's rows. SQLite has no
        database wall, so raw SQL naming a tenant table is refused there
        (:class:`UnsafeStatement`); raw SQL on other tables is allowed on both backends.
        """
        self._check_open()
        scope = current_scope()
        if scope is None:
            raise ClinicContextRequired("raw SQL needs a clinic scope: use db.clinic(...)")
        if not isinstance(reason, str) or not 1 <= len(reason.strip()) <= middleware.MAX_REASON:
            raise InvalidInput(
                f"execute_raw needs a reason of 1-{middleware.MAX_REASON} characters"
            )
        prepared = raw.prepare(
            sql,
            params,
            dialect=self.engines.dialect,
            read_only=read_only,
            clinic_id=scope.clinic_id,
        )
        log.warning(
            "raw_sql",
            clinic_id=str(scope.clinic_id),
            actor=str(scope.actor) if scope.actor else None,
            purpose=scope.purpose,
            reason_length=len(reason.strip()),
            fingerprint=prepared.fingerprint,
            kind=prepared.kind,
        )
        kind = CallKind.READ if read_only else CallKind.WRITE
        rows: list[dict[str, object]] = await self._run(
            kind, raw.operation(prepared), QueryOptions.for_phi("raw_sql")
        )
        return rows

    # -- rate limits --------------------------------------------------------------------

    async def check_rate_limit(self, clinic_id: uuid.UUID | str) -> None:
        """Charge one request to the clinic's budget; raise :class:`RateLimited` over it.

        The reference service charges every authenticated HTTP request; library users call
        this once per unit of work they want budgeted. ``execute_critical`` never charges.
        """
        self._check_open()
        await self.rate_limiter.check(as_uuid(clinic_id, "clinic_id"))

    async def _rate_override(self, clinic_id: uuid.UUID) -> int | None:
        async def read(session: AsyncSession) -> int | None:
            stmt = select(Clinic.rate_limit_per_minute).where(Clinic.id == clinic_id)
            value: int | None = (await session.execute(stmt)).scalar_one_or_none()
            return value

        return await self.execute_read(read, QueryOptions.for_read("rate_limit_budget"))

    # -- plumbing -----------------------------------------------------------------------

    async def _run(
        self,
        kind: CallKind,
        op: Operation[Any] | Read[Any] | Command[Any],
        options: QueryOptions | TransactionOptions,
        *,
        reason: str | None = None,
    ) -> Any:
        self._check_open()
        call = Call(kind=kind, operation=op, options=options, scope=current_scope(), reason=reason)
        self._in_flight += 1
        self._idle.clear()
        try:
            with using_keyring(self.keyring):
                return await self._handle(call)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _endpoint(self, call: Call) -> Any:
        if isinstance(call.operation, Read):
            return await read_unit(
                call.operation,
                call,
                engine=self.engines.primary,
                driver=self.engines.driver,
                audit_writer=self.audit_writer,
            )
        sessions = self._sessions
        if call.kind is CallKind.CRITICAL:
            sessions = self._critical_sessions
            self._log_break_glass(call)

        def run_orm(operation: Operation[Any]) -> Awaitable[Any]:
            return unit_of_work(
                sessions,
                call,
                operation,
                postgres=self.engines.is_postgres,
                on_commit=self._invalidate,
                batch_statement_timeout_ms=self.settings.batch_statement_timeout_ms,
                audit_writer=self.audit_writer,
                audit_lanes=self.settings.audit_lanes,
            )

        if isinstance(call.operation, Command):
            return await write_unit(
                call.operation,
                call,
                engine=self.engines.primary,
                driver=self.engines.driver,
                audit_lanes=self.settings.audit_lanes,
                on_commit=self._invalidate,
                run_fallback=lambda change: run_orm(change.fallback),
            )
        operation = call.operation

        def run() -> Awaitable[Any]:
            return run_orm(operation)

        options = call.options
        if isinstance(options, TransactionOptions) and options.lock is LockMode.OPTIMISTIC:

            def on_retry(attempt: int, exc: BaseException) -> None:
                self.metrics.retries.labels("optimistic").inc()
                log_retry(call.name, attempt, exc, kind="optimistic")

            return await optimistic(run, max_retries=options.max_retries, on_retry=on_retry)
        return await run()

    async def _invalidate(self, tags: set[str]) -> None:
        self.cache.invalidate(tags)
        if self.bus is not None:
            await self.bus.publish(tags)

    def _log_break_glass(self, call: Call) -> None:
        # Logged once the call has passed validation and security, so refusals never count.
        scope = call.scope
        log.warning(
            "break_glass",
            clinic_id=str(scope.clinic_id) if scope else None,
            actor=str(scope.actor) if scope and scope.actor else None,
            purpose=scope.purpose if scope else None,
            reason_length=len(call.reason or ""),
        )
        self.metrics.critical.inc()
        # Exempt from rate limits; every use is counted, labelled by whether this process
        # has recently refused the clinic (no Redis round trip on the emergency path).
        if scope is not None:
            over = self.rate_limiter.over_budget(scope.clinic_id)
            log.info("rate_limit_exempt", clinic_id=str(scope.clinic_id), over_budget=over)
            self.metrics.rate_limit_exempt.labels(str(over).lower()).inc()

    async def _bulk_insert(
        self,
        rows: Sequence[Any],
        model: type[DeclarativeBase],
        options: QueryOptions,
        concurrency: int,
        chunk_size: int | None,
        on_progress: Callable[[int], None] | None,
    ) -> BatchResult[Any]:
        scope = current_scope()
        clinic = scope.clinic_id if scope else None
        if clinic is None and is_tenant(model):
            raise ClinicContextRequired("a bulk insert into a tenant table needs a clinic scope")
        with using_keyring(self.keyring):  # rows are validated (blind indexes) before any call
            return await batch.run_bulk_insert(
                rows,
                model,
                clinic_id=clinic,
                run_unit=lambda unit: self._run(CallKind.WRITE, unit, options),
                # A chunk keeps a core busy (encryption, sealing) while the server takes the
                # previous one: more chunks at once only queue, on locks and on the CPU.
                concurrency=min(concurrency, self.settings.pool_size, BULK_CONCURRENCY),
                chunk_size=_chunk(chunk_size, self.settings.batch_chunk_size),
                translate=translate,
                on_progress=on_progress,
            )

    # -- lifecycle and health -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceClosed("the database service is closed")

    @property
    def closed(self) -> bool:
        return self._closed

    async def ping(self) -> float:
        """One round trip on the primary pool; returns milliseconds."""
        self._check_open()  # a closed service must not reopen its disposed pool
        try:
            return await health.ping(self.engines.primary)
        except Exception as exc:
            raise translate(exc) from exc

    async def health(self) -> HealthReport:
        """Database reachability, latency and pool occupancy (never raises)."""
        pools = self._pools()
        for name, status in pools.items():
            self.metrics.pool_in_use.labels(name).set(status.checked_out)
        try:
            latency = await self.ping()
        except (DatabaseUnavailable, ServiceClosed) as exc:
            return HealthReport(False, self.engines.dialect, None, pools, exc.code)
        return HealthReport(True, self.engines.dialect, latency, pools)

    def _pools(self) -> dict[str, PoolStatus]:
        return {
            "primary": health.pool_status(self.engines.primary),
            "critical": health.pool_status(self.engines.critical),
        }

    def metrics_summary(self) -> dict[str, Any]:
        """Pool, latency percentiles per operation, cache hit ratio, recent slow statements."""
        latency: Mapping[str, LatencySummary] = self.metrics.latency()
        slow: list[SlowStatement] = list(self.slow_log.records)
        return {
            "pools": self._pools(),
            "latency": latency,
            "cache": {"entries": len(self.cache.store), "hit_ratio": self.cache.store.hit_ratio},
            "slow_statements": slow,
        }

    async def close(self, *, drain_seconds: float | None = None) -> None:
        """Refuse new calls, wait for in-flight ones (bounded), then release every connection."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(
                self._idle.wait(), drain_seconds or self.settings.shutdown_timeout
            )
        except TimeoutError:
            log.error("shutdown_drain_timeout", in_flight=self._in_flight)
        await self.audit_writer.close(self.settings.shutdown_timeout)
        if self.bus is not None:
            await self.bus.close()
        await self.rate_limiter.close()
        await self.engines.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _Connecting:
    """Awaitable and async context manager returned by :meth:`DatabaseService.connect`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._db: DatabaseService | None = None

    def __await__(self) -> Generator[Any, None, DatabaseService]:
        return DatabaseService._open(self._settings).__await__()

    async def __aenter__(self) -> DatabaseService:
        self._db = await DatabaseService._open(self._settings)
        return self._db

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._db is not None:
            await self._db.close()


def _invalidation_bus(settings: Settings, cache: QueryCache) -> InvalidationBus | None:
    if settings.redis_url is None:
        return None
    client = Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
    )
    return InvalidationBus(client=client, on_remote=cache.invalidate, on_reset=cache.store.clear)


def _rate_limiter(
    settings: Settings,
    metrics: QueryMetrics,
    load_override: Callable[[uuid.UUID], Awaitable[int | None]],
) -> ClinicRateLimiter:
    store = None
    if settings.redis_url is not None:
        # A blocking pool: a burst of requests waits (bounded) for a connection instead of
        # failing with "too many connections" and tripping the per-process fallback.
        pool = BlockingConnectionPool.from_url(
            settings.redis_url.get_secret_value(),
            max_connections=100,
            timeout=settings.redis_timeout,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
        )
        store = RedisGcra(Redis.from_pool(pool), timeout=settings.redis_timeout)
    return ClinicRateLimiter(
        per_minute=settings.rate_limit_per_minute,
        burst=settings.rate_limit_burst,
        store=store,
        local=LocalGcra(),
        load_override=load_override,
        on_limited=lambda backend: metrics.rate_limited.labels(backend).inc(),
        on_switch=lambda backend: metrics.rate_limit_fallbacks.labels(backend).inc(),
    )


def _check_items(items: Any, limit: int) -> Sequence[Any]:
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise InvalidInput("items must be a sequence (list or tuple)")
    if len(items) > limit:
        raise InvalidInput(f"a batch may hold at most {limit} items")
    return items


def _chunk(value: int | None, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or not 1 <= value <= 100_000:
        raise InvalidInput("chunk_size must be an int in 1..100000")
    return value
