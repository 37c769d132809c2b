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
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from healthdb.engine import Sessions
from healthdb.errors import (
    AuditWriteFailed,
    ConflictError,
    PhiNotCacheable,
    QueryTimeout,
)
from healthdb.internal import audit, phi_access
from healthdb.internal.isolation import PESSIMISTIC
from healthdb.internal.phi_access import Access
from healthdb.internal.query_cache import WRITTEN_TAGS
from healthdb.internal.retry import SnapshotConflict, is_transient, is_unique_violation
from healthdb.internal.rls import SET_CLINIC
from healthdb.query.options import (
    LockMode,
    QueryOptions,
    ReadStrategy,
    TransactionOptions,
    WriteStrategy,
)
from healthdb.query.pipeline import Call, CallKind

OnCommit = Callable[[set[str]], Awaitable[None]]


def _is_read_only(call: Call) -> bool:
    options = call.options
    if isinstance(options, TransactionOptions):
        return options.is_read_only
    # A PHI read writes its audit rows in its own transaction, so it cannot be read-only.
    return call.kind is CallKind.READ and not options.phi


async def unit_of_work(
    sessions: Sessions,
    call: Call,
    *,
    postgres: bool,
    on_commit: OnCommit,
    batch_statement_timeout_ms: int,
    audit_lanes: int = 1,
) -> Any:
    """Run ``call.operation`` in one transaction and commit; invalidate after commit."""
    options = call.options
    read_only = _is_read_only(call)
    factory = sessions.read if read_only else sessions.write
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
            await _set_clinic(session, call)
        try:
            async with asyncio.timeout(options.timeout):
                result = await call.operation(session)
                records = await _accesses(session, call)
                if records and not read_only:
                    await _audit(session, call, records, lanes=audit_lanes)
                await session.commit()
                if records and read_only:
                    await _audit_apart(
                        sessions, call, records, postgres=postgres, lanes=audit_lanes
                    )
        except TimeoutError:
            raise QueryTimeout("the operation exceeded its time limit") from None
        tags = session.sync_session.info.get(WRITTEN_TAGS)
        if tags:
            await on_commit(set(tags))
        if call.scope is not None:
            phi_access.mask_touched(session.sync_session, call.scope)
        return result


async def _set_clinic(session: AsyncSession, call: Call) -> None:
    # The database wall: row-level security sees this clinic, for this transaction only.
    # Without a scope nothing is set and RLS shows no tenant rows at all.
    assert call.scope is not None
    conn = await session.connection()
    await conn.execute(SET_CLINIC, {"clinic_id": str(call.scope.clinic_id)})


async def _accesses(session: AsyncSession, call: Call) -> list[Access]:
    """Flush, then take what the unit touched that must be audited."""
    await session.flush()
    records = phi_access.take_pending(session.sync_session)
    options = call.options
    cached = isinstance(options, QueryOptions) and options.read_strategy is ReadStrategy.CACHED
    if records and cached:
        raise PhiNotCacheable(
            "this cached read loaded PHI; PHI reads are audited one by one and never cached"
        )
    if call.kind is CallKind.CRITICAL:
        records.insert(0, Access("emergency.access", "emergency_lane", None, ()))
    return records


async def _audit(session: AsyncSession, call: Call, records: list[Access], *, lanes: int) -> None:
    """Write the audit rows in the unit's own transaction: no row, no commit."""
    if call.scope is None:
        raise AuditWriteFailed("PHI was touched outside a clinic scope; nothing to attribute")
    rows = phi_access.audit_rows(records, call.scope, reason=call.reason)
    # The op is done: its row locks stay, but the chain-head read must not take FOR UPDATE
    # (the runtime role may only SELECT and INSERT audit rows).
    session.sync_session.info.pop(PESSIMISTIC, None)
    try:
        await audit.append_rows(session, rows, lanes=lanes)
    except Exception as exc:
        if is_unique_violation(exc):
            # Only the chain's (clinic, lane, seq) can collide: a REPEATABLE READ /
            # SERIALIZABLE snapshot predates another transaction's append to this lane. Like a
            # serialization failure, re-running the unit with a fresh snapshot resolves it.
            raise SnapshotConflict(
                "the audit chain moved under this transaction's snapshot; re-run",
                retry_after=0.1,
            ) from exc
        if is_transient(exc):
            raise  # a serialization failure or a busy SQLite: the whole unit is re-run
        raise AuditWriteFailed("the audit trail could not be written; access refused") from exc


async def _audit_apart(
    sessions: Sessions, call: Call, records: list[Access], *, postgres: bool, lanes: int
) -> None:
    """A read-only unit's audit rows, in a write transaction right after it. The caller gets
    the result only once they are committed."""
    async with sessions.write() as session:
        if postgres and call.scope is not None:
            await _set_clinic(session, call)
        await _audit(session, call, records, lanes=lanes)
        await session.commit()


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
