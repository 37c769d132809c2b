"""Group commit for the audit rows of reads.

A read's audit row must be durable before its PHI leaves, but nothing requires one lock and
one COMMIT per read. :class:`AuditWriter` gathers the rows of concurrent reads and appends
them in one transaction per clinic per flush, as databases do for their WAL: while one flush
is in flight, the rows of the reads that finish meanwhile queue up, and the next flush takes
them all. Each reader awaits the flush that holds its rows; when that flush fails, every
reader in it gets :class:`~healthdb.errors.AuditWriteFailed` and returns nothing.

The chain is unchanged (:mod:`.chain`): a flush is a run of consecutive rows on one lane,
each sealed and linked to the previous one. How a clinic's rows reach the database is the
``flush`` callable's business: :func:`postgres_flush` (one statement carrying every row,
on the driver connection) or, on SQLite, a write transaction with
:func:`~.append.append_rows`. Writes keep their audit rows in their own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from healthdb.errors import AuditWriteFailed

__all__ = ["AuditWriter", "Flush"]

log = structlog.get_logger("healthdb.audit")

#: Writes one clinic's rows durably (committed) or raises.
Flush = Callable[[uuid.UUID, list[dict[str, Any]]], Awaitable[None]]
Waiter = tuple[list[dict[str, Any]], "asyncio.Future[None]"]


class AuditWriter:
    """Appends the audit rows of reads in groups: one transaction per clinic per flush.

    ``max_rows`` bounds one flush (a burst is written in several); ``max_clinics`` bounds
    how many clinics' transactions one flush runs at once (each holds a connection).
    """

    def __init__(self, *, flush: Flush, max_rows: int = 5000, max_clinics: int = 4) -> None:
        self._flush = flush
        self._max_rows = max_rows
        self._max_clinics = max_clinics
        self._queue: list[Waiter] = []
        self._writing: list[Waiter] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Counters for metrics and benchmarks: flushes done and rows they wrote.
        self.flushes = 0
        self.rows = 0

    async def write(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` (one clinic's unsealed audit rows, in order); return once they are
        committed. Raises :class:`AuditWriteFailed` when they could not be written."""
        if not rows:
            return
        if self._closed:
            raise AuditWriteFailed("the audit trail is closed; access refused")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((rows, waiter))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="healthdb-audit-writer")
        await waiter

    async def close(self, drain_seconds: float) -> None:
        """Refuse new rows, let the queued ones be written (at most ``drain_seconds``)."""
        self._closed = True
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), drain_seconds)
        except TimeoutError:
            log.error("audit_writer_drain_timeout", queued=len(self._queue))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # its handler fails every waiter it held
        self._fail(self._queue, "the audit trail closed before these rows were written")
        self._queue = []

    async def _drain(self) -> None:
        try:
            while self._queue:
                self._writing = self._take()
                await self._write_group(self._writing)
                self._writing = []
        except BaseException as exc:  # cancelled or a bug: nobody may wait forever
            self._fail([*self._writing, *self._queue], "the audit writer stopped", exc)
            self._writing, self._queue = [], []
            if not isinstance(exc, Exception):
                raise
            log.error("audit_writer_failed", error_type=type(exc).__name__)
        finally:
            self._task = None

    def _take(self) -> list[Waiter]:
        taken: list[Waiter] = []
        count = 0
        while self._queue and (not taken or count + len(self._queue[0][0]) <= self._max_rows):
            waiter = self._queue.pop(0)
            taken.append(waiter)
            count += len(waiter[0])
        return taken

    async def _write_group(self, group: list[Waiter]) -> None:
        by_clinic: dict[uuid.UUID, list[Waiter]] = {}
        for waiter in group:
            by_clinic.setdefault(waiter[0][0]["clinic_id"], []).append(waiter)
        clinics = list(by_clinic.items())
        for start in range(0, len(clinics), self._max_clinics):
            batch = clinics[start : start + self._max_clinics]
            outcomes = await asyncio.gather(
                *(self._write_clinic(clinic, waiters) for clinic, waiters in batch),
                return_exceptions=True,
            )
            for (_, waiters), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    log.warning("audit_flush_failed", error_type=type(outcome).__name__)
                    self._fail(waiters, _REFUSED, outcome)
                else:
                    for _, future in waiters:
                        if not future.done():
                            future.set_result(None)

    async def _write_clinic(self, clinic_id: uuid.UUID, waiters: list[Waiter]) -> None:
        rows = [row for batch, _ in waiters for row in batch]
        await self._flush(clinic_id, rows)
        self.flushes += 1
        self.rows += len(rows)

    @staticmethod
    def _fail(waiters: list[Waiter], message: str, cause: BaseException | None = None) -> None:
        for _, future in waiters:
            if not future.done():
                # One exception per waiter: each is raised in its own task.
                error = AuditWriteFailed(message)
                error.__cause__ = cause
                future.set_exception(error)


_REFUSED = "the audit trail could not be written; access refused"
