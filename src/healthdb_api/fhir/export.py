"""The bulk export worker: one asyncio task per job this process is running.

A job is started by its kick-off and resumed by any status poll that finds it unattended
(no lease, or an expired one): after a restart, a crash, or on another instance behind the
same database. Each step reads one page of patients through the audited, masked view
(:func:`~healthdb.repositories.patient_views.export_batch`, the requester's scope) and
commits it as the next file (:func:`healthdb_api.fhir.jobs.append`).

Failures: the database going away (or the service closing) pauses the job, to be resumed
by the next poll; losing the lease or the job stops the worker quietly; anything else
fails the job with a PHI-free reason that the status endpoint reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid

import structlog

from healthdb import (
    AuditWriteFailed,
    ConflictError,
    DatabaseService,
    DatabaseUnavailable,
    HealthdbError,
    NotFound,
    QueryOptions,
    ServiceClosed,
)
from healthdb.repositories import patient_views
from healthdb_api.fhir import jobs
from healthdb_api.fhir.jobs import JobRef, Position
from healthdb_api.fhir.mapping import to_resource
from healthdb_api.fhir.outcome import dump
from healthdb_api.fhir.settings import FhirSettings

__all__ = ["ExportRunner"]

log = structlog.get_logger("healthdb_api.fhir")

#: Bound on the clean-up a stopping worker does (giving its lease back).
_RELEASE_SECONDS = 5.0
_PAUSED = (DatabaseUnavailable, AuditWriteFailed, ServiceClosed)


class ExportRunner:
    """Runs this process's export jobs; :meth:`close` stops them, giving their leases back."""

    def __init__(self, db: DatabaseService, settings: FhirSettings) -> None:
        self.db = db
        self.settings = settings
        #: This worker's name in ``export_jobs.lease_owner``: host, process, instance.
        self.owner = f"{socket.gethostname()[:40]}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}

    def running(self, job_id: uuid.UUID) -> bool:
        """True while this process works on ``job_id``."""
        return job_id in self._tasks

    def start(self, job: JobRef) -> None:
        """Work on ``job`` unless this process already does (it may find the job held by a
        live worker elsewhere, and then stops at once)."""
        if job.id in self._tasks:
            return
        task = asyncio.create_task(self._run(job), name=f"fhir-export-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(job.id, None))

    async def stop(self, job_id: uuid.UUID) -> None:
        """Stop working on ``job_id`` (if this process does) and wait until it has."""
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        """Stop every job of this process (each gives its lease back, bounded)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job: JobRef) -> None:
        settings = self.settings
        try:
            at = await jobs.claim(self.db, job, self.owner, settings.export_lease_seconds)
            while at is not None:
                at = await self._step(job, at)
        except asyncio.CancelledError:
            await self._release(job)
            raise
        except (ConflictError, NotFound):
            log.info("fhir_export_lost", job_id=str(job.id))
        except _PAUSED as exc:
            log.warning("fhir_export_paused", job_id=str(job.id), code=exc.code)
            await self._release(job)
        except HealthdbError as exc:
            await self._fail(job, f"{exc.code}: {exc}")
        except Exception as exc:
            log.error("fhir_export_error", job_id=str(job.id), error_type=type(exc).__name__)
            await self._fail(job, "internal error")

    async def _step(self, job: JobRef, at: Position) -> Position | None:
        settings = self.settings
        read = patient_views.export_batch(
            cursor=at.cursor, limit=settings.export_file_size, changed_since=at.changed_since
        )
        async with job.scope(self.db):
            page = await self.db.execute_read(read, QueryOptions.for_phi("fhir.export"))
        system = settings.mrn_system
        lines = b"".join(dump(to_resource(p, mrn_system=system)) + b"\n" for p in page.items)
        return await jobs.append(
            self.db,
            job,
            self.owner,
            at,
            lines=lines.decode(),
            count=len(page.items),
            next_cursor=page.next_cursor,
            lease=settings.export_lease_seconds,
            retention=settings.export_retention_seconds,
        )

    async def _release(self, job: JobRef) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_RELEASE_SECONDS):
                await jobs.release(self.db, job, self.owner)

    async def _fail(self, job: JobRef, failure: str) -> None:
        log.warning("fhir_export_failed", job_id=str(job.id))
        try:
            await jobs.finish_with_failure(
                self.db, job, self.owner, failure, self.settings.export_retention_seconds
            )
        except HealthdbError as exc:  # the job stays in progress; a poll retries it
            log.warning("fhir_export_fail_unrecorded", job_id=str(job.id), code=exc.code)
