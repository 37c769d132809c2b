"""Bulk export jobs and their output files: tenant tables, so both walls keep one clinic's
exports (status and PHI alike) from every other clinic.

A job belongs to the staff member who started it and remembers the role it was started
with: its files hold what that role may see, masked when they were written. Each file is
one page of resources as NDJSON, stored AES-GCM-encrypted (:class:`EncryptedText`) and
declared :attr:`PhiKind.BULK_EXPORT`, so loading one is audited like any PHI read and
rotated with the other encrypted columns (``healthdb keys rotate``).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKeyConstraint, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from healthdb.models.base import Base, Tenant, Timestamped, new_id
from healthdb.phi.crypto import EncryptedText
from healthdb.phi.declaration import PhiKind, phi


class ExportJob(Tenant, Timestamped, Base):
    """One bulk export: who asked, for what, how far it got, and who is working on it.

    ``cursor`` is the keyset position after the last exported resource (creation time and
    id, never a PHI value); a worker holds the job while ``lease_expires`` is in the future,
    so a job whose worker died is taken over by the next status poll.
    """

    __tablename__ = "export_jobs"
    __table_args__ = (
        # Target of the files' composite key: a file can only belong to its clinic's job.
        UniqueConstraint("clinic_id", "id"),
        ForeignKeyConstraint(["clinic_id", "requested_by"], ["users.clinic_id", "users.id"]),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    requested_by: Mapped[uuid.UUID] = mapped_column()
    requester_role: Mapped[str] = mapped_column(String(32))
    resource_type: Mapped[str] = mapped_column(String(32), default="Patient")
    status: Mapped[str] = mapped_column(String(16), default="in-progress")
    request_url: Mapped[str] = mapped_column(String(500))
    changed_since: Mapped[dt.datetime | None] = mapped_column(default=None)
    cursor: Mapped[str | None] = mapped_column(String(512), default=None)
    exported: Mapped[int] = mapped_column(Integer, default=0)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    failure: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}


class ExportFile(Tenant, Timestamped, Base):
    """One output file of a job: ``resources`` resources of ``resource_type`` as NDJSON."""

    __tablename__ = "export_files"
    __table_args__ = (
        ForeignKeyConstraint(
            ["clinic_id", "job_id"], ["export_jobs.clinic_id", "export_jobs.id"], ondelete="CASCADE"
        ),
        UniqueConstraint("job_id", "seq"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    job_id: Mapped[uuid.UUID] = mapped_column()
    seq: Mapped[int] = mapped_column(Integer)
    resource_type: Mapped[str] = mapped_column(String(32))
    resources: Mapped[int] = mapped_column(Integer)
    ndjson: Mapped[str] = mapped_column(
        EncryptedText("export_files.ndjson"), info=phi(PhiKind.BULK_EXPORT)
    )
