"""The chain's steps: validation, security, metrics, optimization, cache, retry.

Steps that need collaborators are made by small factories (closures), tenacity-style.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError
from tenacity import AsyncRetrying

from healthdb.errors import ClinicContextRequired, HealthdbError, InvalidInput
from healthdb.internal.metrics import QueryMetrics
from healthdb.internal.optimizer import current_operation
from healthdb.internal.query_cache import QueryCache
from healthdb.internal.retry import retryable, translate
from healthdb.query.options import QueryOptions, ReadStrategy, TransactionOptions
from healthdb.query.pipeline import Call, CallKind, Handler, Middleware

log = structlog.get_logger("healthdb.query")
MAX_REASON = 500


async def validation(call: Call, next_: Handler) -> Any:
    """Refuse malformed calls before they cost a connection."""
    if inspect.iscoroutine(call.operation):
        call.operation.close()
        raise InvalidInput("pass the operation itself (an async callable), not a coroutine")
    if not callable(call.operation):
        raise InvalidInput("operation must be an async callable taking a session")
    expected = TransactionOptions if call.kind is CallKind.TRANSACTION else QueryOptions
    if not isinstance(call.options, expected):
        raise InvalidInput(f"{call.kind.value} calls take {expected.__name__}")
    if call.kind is CallKind.CRITICAL:
        reason = (call.reason or "").strip()
        if not reason or len(reason) > MAX_REASON:
            raise InvalidInput(f"execute_critical needs a reason of 1-{MAX_REASON} characters")
    return await next_(call)


async def security(call: Call, next_: Handler) -> Any:
    """PHI and break-glass work must be attributable to a clinic scope."""
    needs_scope = call.kind is CallKind.CRITICAL or (
        isinstance(call.options, QueryOptions) and call.options.phi
    )
    if needs_scope and call.scope is None:
        raise ClinicContextRequired("PHI and emergency access need a clinic scope")
    return await next_(call)


def measured(metrics: QueryMetrics) -> Middleware:
    """Latency histogram and outcome per operation, kind and strategy."""

    async def step(call: Call, next_: Handler) -> Any:
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
            strategy = "cache_hit" if call.cache_hit else call.strategy
            metrics.observe(
                operation=call.name,
                kind=call.kind.value,
                strategy=strategy,
                outcome=outcome,
                seconds=time.perf_counter() - started,
            )

    return step


def optimized(slow_ms: float) -> Middleware:
    """Attribute statements to the operation and log operations over ``slow_ms``."""

    async def step(call: Call, next_: Handler) -> Any:
        token = current_operation.set(call.name)
        started = time.perf_counter()
        try:
            return await next_(call)
        finally:
            current_operation.reset(token)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if elapsed_ms >= slow_ms and not call.cache_hit:
                log.warning("slow_operation", operation=call.name, duration_ms=round(elapsed_ms, 2))

    return step


def cached(cache: QueryCache, metrics: QueryMetrics) -> Middleware:
    """Serve ``cached`` reads from the query cache, partitioned by clinic and role."""

    async def step(call: Call, next_: Handler) -> Any:
        options = call.options
        if not (
            isinstance(options, QueryOptions)
            and call.kind is CallKind.READ
            and options.read_strategy is ReadStrategy.CACHED
            and options.cache_key is not None
        ):
            return await next_(call)
        scope = call.scope
        partition = f"{scope.clinic_id}:{scope.role.value}" if scope else "-"
        value, hit = await cache.read_through(
            options.cache_key, lambda: next_(call), ttl=options.cache_ttl, partition=partition
        )
        call.cache_hit = hit
        metrics.cache.labels("hit" if hit else "miss").inc()
        return value

    return step


def retried(make_retrying: Callable[[bool], AsyncRetrying], metrics: QueryMetrics) -> Middleware:
    """Re-run on serialization failures and deadlocks (and, for reads, dead connections);
    translate every error once."""

    async def step(call: Call, next_: Handler) -> Any:
        idempotent = call.kind is CallKind.READ or (
            isinstance(call.options, TransactionOptions) and call.options.is_read_only
        )
        try:
            try:
                return await next_(call)
            except Exception as exc:
                if not retryable(exc, idempotent=idempotent):
                    raise
            await asyncio.sleep(random.uniform(0.005, 0.02))
            async for attempt in make_retrying(idempotent):
                with attempt:
                    metrics.retries.labels("transient").inc()
                    return await next_(call)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise translate(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    return step
