"""Strategies: how a call's unit of work is opened, run and closed.

A strategy is a function of the call; :func:`unit_of_work` is the single place where a
session is opened, configured (read-only, isolation, locking, SQLite write lock), committed
or rolled back — so every path releases its connection, including on cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from healthdb.engine import SQLITE_BEGIN
from healthdb.errors import ConflictError, QueryTimeout
from healthdb.internal.isolation import PESSIMISTIC
from healthdb.internal.query_cache import written_tags
from healthdb.query.options import LockMode, QueryOptions, TransactionOptions, WriteStrategy
from healthdb.query.pipeline import Call, CallKind

OnCommit = Callable[[set[str]], Awaitable[None]]


def _execution_options(call: Call, *, postgres: bool) -> dict[str, Any]:
    options = call.options
    read_only = call.kind is CallKind.READ or (
        isinstance(options, TransactionOptions) and options.is_read_only
    )
    opts: dict[str, Any] = {}
    if isinstance(options, TransactionOptions) and options.isolation is not None:
        opts["isolation_level"] = options.isolation.value
    if postgres and read_only:
        opts["postgresql_readonly"] = True
    if not postgres and not read_only:
        # SQLite has one writer: take the lock at BEGIN, not on first write (no upgrade deadlock).
        opts[SQLITE_BEGIN] = "IMMEDIATE"
    return opts


async def unit_of_work(
    factory: async_sessionmaker[AsyncSession],
    call: Call,
    *,
    postgres: bool,
    on_commit: OnCommit,
    batch_statement_timeout_ms: int,
) -> Any:
    """Run ``call.operation`` in one transaction and commit; invalidate after commit."""
    options = call.options
    timeout = options.timeout
    async with factory() as session:
        if isinstance(options, TransactionOptions) and options.lock is LockMode.PESSIMISTIC:
            session.sync_session.info[PESSIMISTIC] = True
        exec_opts = _execution_options(call, postgres=postgres)
        if exec_opts:
            await session.connection(execution_options=exec_opts)
        if (
            postgres
            and isinstance(options, QueryOptions)
            and options.write_strategy is WriteStrategy.BATCH
        ):
            await session.execute(_SET_LOCAL_TIMEOUT, {"ms": str(batch_statement_timeout_ms)})
        try:
            async with asyncio.timeout(timeout):
                result = await call.operation(session)
                await session.commit()
        except TimeoutError:
            raise QueryTimeout("the operation exceeded its time limit") from None
        tags = written_tags(session.sync_session)
        if tags:
            await on_commit(set(tags))
        return result


_SET_LOCAL_TIMEOUT = text("SELECT set_config('statement_timeout', :ms, true)")


async def optimistic(
    run: Callable[[], Awaitable[Any]], *, max_retries: int, on_retry: Callable[[], None]
) -> Any:
    """Re-run the whole unit on a version conflict, then give up with :class:`ConflictError`."""
    for attempt in range(max_retries + 1):
        try:
            return await run()
        except StaleDataError as exc:
            if attempt == max_retries:
                raise ConflictError(
                    "the row kept changing under this transaction; reload and retry"
                ) from exc
            on_retry()
            await asyncio.sleep(0.005 * (2**attempt))
    raise AssertionError("unreachable")  # pragma: no cover
