"""Strategies: how a call's unit of work is opened, run and closed.

A strategy is a function of the call; :func:`unit_of_work` is the single place where a
session is opened, configured (read-only, isolation, locking, SQLite write lock), committed
or rolled back — so every path releases its connection, including on cancellation.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from healthdb.engine import PreludeConnection, Sessions, begin_with, disarm
from healthdb.errors import (
    AuditWriteFailed,
    ClinicContextRequired,
    ConflictError,
    PhiNotCacheable,
    QueryTimeout,
)
from healthdb.internal import audit, phi_access
from healthdb.internal.audit.writer import AuditWriter
from healthdb.internal.isolation import PESSIMISTIC
from healthdb.internal.phi_access import Access
from healthdb.internal.query_cache import WRITTEN_TAGS
from healthdb.internal.retry import SnapshotConflict, is_transient, is_unique_violation
from healthdb.internal.rls import CLINIC_SETTING
from healthdb.query.options import (
    LockMode,
    QueryOptions,
    ReadStrategy,
    TransactionOptions,
    WriteStrategy,
)
from healthdb.query.pipeline import Call, CallKind, Operation

OnCommit = Callable[[set[str]], Awaitable[None]]


def _is_read_only(call: Call) -> bool:
    options = call.options
    if isinstance(options, TransactionOptions):
        return options.is_read_only
    # A PHI read is read-only too: its audit rows go through the group-commit writer.
    return call.kind is CallKind.READ


async def unit_of_work(
    sessions: Sessions,
    call: Call,
    operation: Operation[Any],
    *,
    postgres: bool,
    on_commit: OnCommit,
    batch_statement_timeout_ms: int,
    audit_writer: AuditWriter,
    audit_lanes: int = 1,
) -> Any:
    """Run ``call.operation`` in one transaction and commit; invalidate after commit.

    A write's audit rows commit in its transaction; a read's are handed to ``audit_writer``
    after its transaction ended (connection released) and the result is returned only once
    they are committed."""
    read_only = _is_read_only(call)
    prelude = _Prelude()
    try:
        return await _run_unit(
            sessions.read if read_only else sessions.write,
            call,
            operation,
            prelude,
            read_only=read_only,
            postgres=postgres,
            on_commit=on_commit,
            batch_statement_timeout_ms=batch_statement_timeout_ms,
            audit_lanes=audit_lanes,
            audit_writer=audit_writer,
        )
    finally:
        prelude.unclaim()  # after the session ended its transaction, and with it the lock


async def _run_unit(
    factory: async_sessionmaker[AsyncSession],
    call: Call,
    operation: Operation[Any],
    prelude: _Prelude,
    *,
    read_only: bool,
    postgres: bool,
    on_commit: OnCommit,
    batch_statement_timeout_ms: int,
    audit_lanes: int,
    audit_writer: AuditWriter,
) -> Any:
    options = call.options
    async with factory() as session:
        if isinstance(options, TransactionOptions):
            if options.lock is LockMode.PESSIMISTIC:
                session.sync_session.info[PESSIMISTIC] = True
            if options.isolation is not None:
                isolation = {"isolation_level": options.isolation.value}
                await session.connection(execution_options=isolation)
        try:
            if postgres:
                batch = isinstance(options, QueryOptions) and (
                    options.write_strategy is WriteStrategy.BATCH
                )
                await prelude.arm(
                    session,
                    call.scope.clinic_id if call.scope is not None else None,
                    timeout_ms=batch_statement_timeout_ms if batch else None,
                    # The unit will write audit rows: take its chain lane with BEGIN too.
                    lanes=audit_lanes if not read_only and _always_audited(call) else None,
                )
            async with asyncio.timeout(options.timeout):
                result = await operation(session)
                records = await _accesses(session, call)
                if records and not read_only:
                    await _audit(session, call, records, lanes=audit_lanes, claimed=prelude.claimed)
                await session.commit()
                if records and read_only:
                    await audit_writer.write(_audit_rows(call, records))
        except TimeoutError:
            raise QueryTimeout("the operation exceeded its time limit") from None
        finally:
            prelude.disarm()  # while the connection is still this session's
        tags = session.sync_session.info.get(WRITTEN_TAGS)
        if tags:
            await on_commit(set(tags))
        if call.scope is not None:
            phi_access.mask_touched(session.sync_session, call.scope)
        return result


class _Prelude:
    """What a unit sends with its BEGIN (PostgreSQL), and the audit lane it claimed.

    Transaction-local settings (``is_local => true``: gone at COMMIT/ROLLBACK), in one
    simple-protocol message with BEGIN (:func:`healthdb.engine.begin_with`), hence rendered
    inline: only from a validated ``uuid.UUID`` (``str()`` gives 36 hex digits and dashes)
    and Python ints. The database wall: row-level security sees this clinic, for this
    transaction only; without a scope nothing is set and RLS shows no tenant rows at all.
    """

    __slots__ = ("armed", "claimed")

    def __init__(self) -> None:
        self.armed: PreludeConnection | None = None
        self.claimed: audit.LaneClaim | None = None

    async def arm(
        self,
        session: AsyncSession,
        clinic_id: uuid.UUID | None,
        *,
        timeout_ms: int | None = None,
        lanes: int | None = None,
    ) -> None:
        settings = []
        if timeout_ms is not None:
            settings.append(f"set_config('statement_timeout', '{int(timeout_ms)}', true)")
        if clinic_id is not None:
            if not isinstance(clinic_id, uuid.UUID):
                raise ClinicContextRequired("the clinic scope holds no valid clinic id")
            settings.append(f"set_config('{CLINIC_SETTING}', '{clinic_id}', true)")
        if not settings:
            return
        conn = await session.connection()  # the checkout (it can queue)
        if clinic_id is not None and lanes is not None:
            # Claimed once the connection is ours, so the in-process lane hint spreads only
            # the units that really run at once.
            self.claimed = audit.claim_lane(clinic_id, lanes)
            if self.claimed.sql is not None:
                settings.append(self.claimed.sql)
        self.armed = begin_with(conn, "SELECT " + ", ".join(settings) + ";")

    def disarm(self) -> None:
        disarm(self.armed)
        self.armed = None

    def unclaim(self) -> None:
        if self.claimed is not None:
            audit.release_lane(self.claimed)
            self.claimed = None


def _always_audited(call: Call) -> bool:
    """Calls that declare PHI, and the break-glass lane, write audit rows (almost) always."""
    options = call.options
    return call.kind is CallKind.CRITICAL or (isinstance(options, QueryOptions) and options.phi)


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


def _audit_rows(call: Call, records: list[Access]) -> list[dict[str, Any]]:
    if call.scope is None:
        raise AuditWriteFailed("PHI was touched outside a clinic scope; nothing to attribute")
    return phi_access.audit_rows(records, call.scope, reason=call.reason)


async def _audit(
    session: AsyncSession,
    call: Call,
    records: list[Access],
    *,
    lanes: int,
    claimed: audit.LaneClaim | None = None,
) -> None:
    """Write the audit rows in the unit's own transaction: no row, no commit."""
    rows = _audit_rows(call, records)
    # The op is done: its row locks stay, but the chain-head read must not take FOR UPDATE
    # (the runtime role may only SELECT and INSERT audit rows).
    session.sync_session.info.pop(PESSIMISTIC, None)
    try:
        await audit.append_rows(session, rows, lanes=lanes, claimed=claimed)
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


async def optimistic(
    run: Callable[[], Awaitable[Any]],
    *,
    max_retries: int,
    on_retry: Callable[[int, BaseException], None],
) -> Any:
    """Re-run the whole unit on a version conflict, then give up with :class:`ConflictError`.
    ``on_retry(attempt, error)`` is told of each re-run (attempt 2 is the first)."""
    for attempt in range(max_retries + 1):
        try:
            return await run()
        except StaleDataError as exc:
            if attempt == max_retries:
                raise ConflictError(
                    "the row kept changing under this transaction; reload and retry"
                ) from exc
            on_retry(attempt + 2, exc)
            await asyncio.sleep(0.005 * (2**attempt))
    raise AssertionError("unreachable")  # pragma: no cover
