"""The chain's steps: validation and security, observation (metrics, slow operations), the
cache, retries.

Each step wraps the next handler (:data:`~healthdb.query.pipeline.Middleware`). Steps that
need collaborators are made by small factories (closures), tenacity-style. Checks that need
no ``await`` are plain functions that return the next handler's coroutine unawaited, and the
cache step does the same for calls it does not serve: they cost the hot path no frame.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog
from sqlalchemy.exc import SQLAlchemyError
from tenacity import AsyncRetrying

from healthdb.command import Command
from healthdb.driver_pool import DriverDisconnect
from healthdb.errors import ClinicContextRequired, HealthdbError, InvalidInput
from healthdb.internal.metrics import QueryMetrics
from healthdb.internal.optimizer import current_operation
from healthdb.internal.query_cache import QueryCache
from healthdb.internal.retry import log_retry, retryable, translate
from healthdb.query.options import QueryOptions, ReadStrategy, TransactionOptions
from healthdb.query.pipeline import Call, CallKind, Handler, Middleware
from healthdb.view import Read

log = structlog.get_logger("healthdb.query")
MAX_REASON = 500
#: What the retry step translates into the library's errors (one translation point).
_DRIVER_ERRORS = (
    SQLAlchemyError,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    DriverDisconnect,
)


def validate(call: Call) -> None:
    """Refuse malformed calls before they cost a connection."""
    operation = call.operation
    if isinstance(operation, Read):
        if call.kind is not CallKind.READ:
            raise InvalidInput("a view is a read: run it with execute_read")
    elif isinstance(operation, Command):
        if call.kind is not CallKind.WRITE:
            raise InvalidInput("a command is a write: run it with execute_write")
    elif inspect.iscoroutine(operation):
        operation.close()
        raise InvalidInput("pass the operation itself (an async callable), not a coroutine")
    elif not callable(operation):
        raise InvalidInput("operation must be an async callable taking a session, or a view")
    expected = TransactionOptions if call.kind is CallKind.TRANSACTION else QueryOptions
    if not isinstance(call.options, expected):
        raise InvalidInput(f"{call.kind.value} calls take {expected.__name__}")
    if call.kind is CallKind.CRITICAL:
        reason = (call.reason or "").strip()
        if not reason or len(reason) > MAX_REASON:
            raise InvalidInput(f"execute_critical needs a reason of 1-{MAX_REASON} characters")


def secure(call: Call) -> None:
    """PHI and break-glass work must be attributable to a clinic scope."""
    if call.scope is not None:
        return
    operation = call.operation
    if (
        call.kind is CallKind.CRITICAL
        or (isinstance(call.options, QueryOptions) and call.options.phi)
        or (isinstance(operation, Read) and bool(operation.view.phi))
    ):
        raise ClinicContextRequired("PHI and emergency access need a clinic scope")


def checked(next_: Handler) -> Handler:
    """:func:`validate` and :func:`secure`, then the rest of the chain."""

    def handler(call: Call) -> Awaitable[Any]:
        validate(call)
        secure(call)
        return next_(call)

    return handler


def observed(metrics: QueryMetrics, slow_ms: float) -> Middleware:
    """Latency histogram and outcome per operation, kind and strategy; statements are
    attributed to the operation; operations over ``slow_ms`` are logged."""

    def wrap(next_: Handler) -> Handler:
        async def handler(call: Call) -> Any:
            token = current_operation.set(call.name)
            started = time.perf_counter()
            outcome = "ok"
            try:
                return await next_(call)
            except HealthdbError as exc:
                outcome = exc.code
                raise
            except BaseException:
                outcome = "error"
                raise
            finally:
                current_operation.reset(token)
                elapsed = time.perf_counter() - started
                strategy = "cache_hit" if call.cache_hit else call.strategy
                metrics.observe(
                    operation=call.name,
                    kind=call.kind.value,
                    strategy=strategy,
                    outcome=outcome,
                    seconds=elapsed,
                )
                if elapsed * 1000 >= slow_ms and not call.cache_hit:
                    log.warning(
                        "slow_operation", operation=call.name, duration_ms=round(elapsed * 1000, 2)
                    )

        return handler

    return wrap


def cached(cache: QueryCache, metrics: QueryMetrics) -> Middleware:
    """Serve ``cached`` reads from the query cache, partitioned by clinic and role."""

    def wrap(next_: Handler) -> Handler:
        async def read_through(call: Call, options: QueryOptions) -> Any:
            assert options.cache_key is not None
            scope = call.scope
            partition = f"{scope.clinic_id}:{scope.role.value}" if scope else "-"
            value, hit = await cache.read_through(
                options.cache_key, lambda: next_(call), ttl=options.cache_ttl, partition=partition
            )
            call.cache_hit = hit
            metrics.cache.labels("hit" if hit else "miss").inc()
            return value

        def handler(call: Call) -> Awaitable[Any]:
            options = call.options
            if (
                isinstance(options, QueryOptions)
                and call.kind is CallKind.READ
                and options.read_strategy is ReadStrategy.CACHED
                and options.cache_key is not None
            ):
                return read_through(call, options)
            return next_(call)

        return handler

    return wrap


def retried(make_retrying: Callable[[bool], AsyncRetrying], metrics: QueryMetrics) -> Middleware:
    """Re-run on serialization failures and deadlocks (and, for reads, dead connections),
    logging each re-run (operation, attempt, error class); translate every error once."""

    def wrap(next_: Handler) -> Handler:
        async def handler(call: Call) -> Any:
            idempotent = call.kind is CallKind.READ or (
                isinstance(call.options, TransactionOptions) and call.options.is_read_only
            )
            try:
                try:
                    return await next_(call)
                except Exception as exc:
                    if not retryable(exc, idempotent=idempotent):
                        raise
                    failure: BaseException = exc
                await asyncio.sleep(random.uniform(0.005, 0.02))
                async for attempt in make_retrying(idempotent):
                    with attempt:
                        metrics.retries.labels("transient").inc()
                        log_retry(call.name, attempt.retry_state.attempt_number + 1, failure)
                        try:
                            return await next_(call)
                        except Exception as exc:
                            failure = exc  # named in the next attempt's line
                            raise
            except _DRIVER_ERRORS as exc:
                raise translate(exc) from exc
            raise AssertionError("unreachable")  # pragma: no cover

        return handler

    return wrap
