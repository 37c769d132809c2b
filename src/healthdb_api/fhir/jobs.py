"""Bulk export jobs in the database (``export_jobs`` / ``export_files``, migration 0009).

Every function runs one unit of work through the facade inside a clinic scope, so both walls
hold: a job and its files are invisible to every other clinic. Within the clinic a job
answers only the staff member who started it (:func:`load`), because its files were masked
for that person's role.

Progress is checkpointed per file: a file, the job's new cursor and the ``phi.export`` audit
row commit together, and only while the worker still holds the job's lease and the cursor it
read from. A crash between reading a page and writing its file loses nothing but that
work: the page is read (and audited) again by whoever resumes the job.
"""

from __future__ import annotations

import datetime as dt
import uuid
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import ClinicScope, ConflictError, DatabaseService, QueryOptions, Role, audit_log
from healthdb.models import ExportFile, ExportJob
from healthdb_api.deps import Principal, scope
from healthdb_api.fhir.mapping import FIELDS
from healthdb_api.fhir.outcome import FhirError

__all__ = [
    "COMPLETED",
    "FAILED",
    "IN_PROGRESS",
    "JobRef",
    "Position",
    "append",
    "claim",
    "create",
    "file_text",
    "files",
    "finish_with_failure",
    "load",
    "release",
    "remove",
]

IN_PROGRESS, COMPLETED, FAILED = "in-progress", "completed", "failed"
PURPOSE = "export"
#: The patient fields a FHIR export carries (the audited ``phi_fields``).
EXPORTED_FIELDS = sorted(FIELDS)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class JobRef:
    """What a worker needs to act for a job: its clinic, requester and role."""

    id: uuid.UUID
    clinic_id: uuid.UUID
    requested_by: uuid.UUID
    role: Role

    @classmethod
    def of(cls, job: ExportJob) -> JobRef:
        return cls(job.id, job.clinic_id, job.requested_by, Role.parse(job.requester_role))

    def scope(self, db: DatabaseService) -> AbstractAsyncContextManager[ClinicScope]:
        """The requester's scope: reads are masked for, and audited as, that person."""
        return db.clinic(
            self.clinic_id,
            actor=self.requested_by,
            role=self.role,
            purpose=PURPOSE,
            request_id=f"export-{self.id.hex}",
        )


@dataclass(frozen=True, slots=True)
class Position:
    """Where a job stands: the keyset cursor after the last exported patient, the files
    written so far and the ``_since`` filter."""

    cursor: str | None
    files: int
    changed_since: dt.datetime | None


async def create(
    db: DatabaseService,
    principal: Principal,
    *,
    request_url: str,
    changed_since: dt.datetime | None,
    max_running: int,
) -> ExportJob:
    """Record a new job for ``principal`` (429 when the clinic already runs
    ``max_running``); expired jobs of the clinic are swept on the way."""

    async def op(session: AsyncSession) -> ExportJob:
        await _sweep(session)
        running = select(func.count()).select_from(ExportJob).where(ExportJob.status == IN_PROGRESS)
        if int((await session.execute(running)).scalar_one()) >= max_running:
            raise FhirError(
                429, "too many exports in progress for this clinic", headers={"Retry-After": "10"}
            )
        job = ExportJob(
            requested_by=principal.user_id,
            requester_role=principal.role.value,
            request_url=request_url,
            changed_since=changed_since,
        )
        session.add(job)
        await session.flush()
        await audit_log.record(session, "export.requested", "export_jobs", job.id)
        return job

    async with scope(db, principal, purpose=PURPOSE):
        return await db.execute_write(op, QueryOptions.for_write("fhir.export.create"))


async def _sweep(session: AsyncSession) -> None:
    expired = select(ExportJob.id).where(ExportJob.expires_at < _now())
    ids = list((await session.scalars(expired)).all())
    if ids:
        await session.execute(delete(ExportFile).where(ExportFile.job_id.in_(ids)))
        await session.execute(delete(ExportJob).where(ExportJob.id.in_(ids)))


async def load(db: DatabaseService, principal: Principal, job_id: uuid.UUID) -> ExportJob | None:
    """The caller's own job, or ``None`` (another user's, another clinic's, expired —
    an expired job is deleted here, files and all)."""

    async def read(session: AsyncSession) -> ExportJob | None:
        return await session.get(ExportJob, job_id)

    async with scope(db, principal, purpose=PURPOSE):
        job = await db.execute_read(read, QueryOptions.for_read("fhir.export.status"))
    if job is None or job.requested_by != principal.user_id:
        return None
    if job.expires_at is not None and job.expires_at <= _now():
        await remove(db, principal, job_id)
        return None
    return job


async def remove(db: DatabaseService, principal: Principal, job_id: uuid.UUID) -> None:
    """Delete a job and its files (cancelling it, if a worker still runs it)."""

    async def op(session: AsyncSession) -> None:
        await session.execute(delete(ExportFile).where(ExportFile.job_id == job_id))
        await session.execute(delete(ExportJob).where(ExportJob.id == job_id))

    async with scope(db, principal, purpose=PURPOSE):
        await db.execute_write(op, QueryOptions.for_phi("fhir.export.delete"))


async def files(db: DatabaseService, principal: Principal, job_id: uuid.UUID) -> list[Any]:
    """``(seq, resource_type, resources)`` of each file, in order (no content is read)."""

    async def read(session: AsyncSession) -> list[Any]:
        statement = (
            select(ExportFile.seq, ExportFile.resource_type, ExportFile.resources)
            .where(ExportFile.job_id == job_id)
            .order_by(ExportFile.seq)
        )
        return list((await session.execute(statement)).all())

    async with scope(db, principal, purpose=PURPOSE):
        return await db.execute_read(read, QueryOptions.for_read("fhir.export.manifest"))


async def file_text(
    db: DatabaseService, principal: Principal, job_id: uuid.UUID, seq: int
) -> str | None:
    """One file's NDJSON; reading it is audited as a read of that file."""

    async def read(session: AsyncSession) -> str | None:
        statement = select(ExportFile).where(ExportFile.job_id == job_id, ExportFile.seq == seq)
        found = (await session.scalars(statement)).one_or_none()
        return None if found is None else found.ndjson

    async with scope(db, principal, purpose=PURPOSE):
        return await db.execute_read(read, QueryOptions.for_phi("fhir.export.download"))


# -- the worker's side ---------------------------------------------------------------------


async def claim(db: DatabaseService, ref: JobRef, owner: str, lease: float) -> Position | None:
    """Take the job's lease (free, expired, or already ``owner``'s); ``None`` when the job
    is gone, finished, or held by a live worker. Two claimants race on the version column:
    one wins."""

    async def op(session: AsyncSession) -> Position | None:
        job = await session.get(ExportJob, ref.id)
        if job is None or job.status != IN_PROGRESS:
            return None
        live = job.lease_expires is not None and job.lease_expires > _now()
        if job.lease_owner not in (None, owner) and live:
            return None
        job.lease_owner, job.lease_expires = owner, _now() + dt.timedelta(seconds=lease)
        return Position(job.cursor, job.file_count, job.changed_since)

    async with ref.scope(db):
        return await db.execute_write(op, QueryOptions.for_write("fhir.export.claim"))


async def append(
    db: DatabaseService,
    ref: JobRef,
    owner: str,
    at: Position,
    *,
    lines: str,
    count: int,
    next_cursor: str | None,
    lease: float,
    retention: float,
) -> Position | None:
    """Store one page as the next file and advance the job (complete it when
    ``next_cursor`` is ``None``); returns the new position, or ``None`` when done. Raises
    :class:`ConflictError` when the worker lost the job meanwhile."""

    async def op(session: AsyncSession) -> Position | None:
        job = await session.get(ExportJob, ref.id)
        if (
            job is None
            or job.lease_owner != owner
            or (job.cursor, job.file_count)
            != (
                at.cursor,
                at.files,
            )
        ):
            raise ConflictError("the export job was taken over or removed")
        now = _now()
        if count:
            job.file_count += 1
            job.exported += count
            session.add(
                ExportFile(
                    job_id=job.id,
                    seq=job.file_count,
                    resource_type="Patient",
                    resources=count,
                    ndjson=lines,
                )
            )
            await audit_log.record(
                session,
                "phi.export",
                "patients",
                reason=f"bulk export {job.id} file {job.file_count}: {count} patient(s)",
                phi_fields=EXPORTED_FIELDS,
            )
        if next_cursor is None:
            job.status, job.finished_at = COMPLETED, now
            job.expires_at = now + dt.timedelta(seconds=retention)
            job.lease_owner = job.lease_expires = None
            return None
        job.cursor, job.lease_expires = next_cursor, now + dt.timedelta(seconds=lease)
        return Position(job.cursor, job.file_count, job.changed_since)

    async with ref.scope(db):
        return await db.execute_write(op, QueryOptions.for_phi("fhir.export.file"))


async def release(db: DatabaseService, ref: JobRef, owner: str) -> None:
    """Give the lease up (a worker stopping cleanly): the next poll resumes at once."""

    async def op(session: AsyncSession) -> None:
        job = await session.get(ExportJob, ref.id)
        if job is not None and job.lease_owner == owner:
            job.lease_owner = job.lease_expires = None

    async with ref.scope(db):
        await db.execute_write(op, QueryOptions.for_write("fhir.export.release"))


async def finish_with_failure(
    db: DatabaseService, ref: JobRef, owner: str, failure: str, retention: float
) -> None:
    """Mark the job failed with a PHI-free reason (kept for ``retention`` seconds)."""

    async def op(session: AsyncSession) -> None:
        job = await session.get(ExportJob, ref.id)
        if job is None or job.lease_owner != owner:
            return
        now = _now()
        job.status, job.failure, job.finished_at = FAILED, failure[:200], now
        job.expires_at = now + dt.timedelta(seconds=retention)
        job.lease_owner = job.lease_expires = None

    async with ref.scope(db):
        await db.execute_write(op, QueryOptions.for_write("fhir.export.fail"))
