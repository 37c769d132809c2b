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
from sqlalchemy.orm.exc import StaleDataError

from healthdb.engine import Sessions
from healthdb.errors import ConflictError, QueryTimeout
from healthdb.internal.isolation import PESSIMISTIC
from healthdb.internal.query_cache import WRITTEN_TAGS
from healthdb.internal.rls import SET_CLINIC
from healthdb.query.options import LockMode, TransactionOptions, WriteStrategy
from healthdb.query.pipeline import Call, CallKind

OnCommit = Callable[[set[str]], Awaitable[None]]


def _is_read_only(call: Call) -> bool:
    options = call.options
    return call.kind is CallKind.READ or (
        isinstance(options, TransactionOptions) and options.is_read_only
    )


async def unit_of_work(
    sessions: Sessions,
    call: Call,
    *,
    postgres: bool,
    on_commit: OnCommit,
    batch_statement_timeout_ms: int,
) -> Any:
    """Run ``call.operation`` in one transaction and commit; invalidate after commit."""
    options = call.options
    factory = sessions.read if _is_read_only(call) else sessions.write
    async with factory() as session:
        if isinstance(options, TransactionOptions):
            if options.lock is LockMode.PESSIMISTIC:
                session.sync_session.info[PESSIMISTIC] = True
            if options.isolation is not None:
                isolation = {"isolation_level": options.isolation.value}
                await session.connection(execution_options=isolation)
        elif postgres and options.write_strategy is WriteStrategy.BATCH:
            await session.execute(_SET_LOCAL_TIMEOUT, {"ms": str(batch_statement_timeout_ms)})
        if postgres and call.scope is not None:
            # The database wall: row-level security sees this clinic, for this transaction
            # only. Without a scope nothing is set and RLS shows no tenant rows at all.
            conn = await session.connection()
            await conn.execute(SET_CLINIC, {"clinic_id": str(call.scope.clinic_id)})
        try:
            async with asyncio.timeout(options.timeout):
                result = await call.operation(session)
                await session.commit()
        except TimeoutError:
            raise QueryTimeout("the operation exceeded its time limit") from None
        tags = session.sync_session.info.get(WRITTEN_TAGS)
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
