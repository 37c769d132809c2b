"""Bulk export jobs and their encrypted output files (FHIR ``$export``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

Two tenant tables: ``export_jobs`` (who asked, the role the files were masked for, how far
the export got, and the worker's lease) and ``export_files`` (one page of NDJSON each, an
AES-GCM token like ``patients.ssn``). Both carry ``clinic_id`` with composite keys, and on
PostgreSQL both get row-level security exactly as migration 0002 set it up for the first
tenant tables: ENABLE + FORCE and one ``clinic_isolation`` policy on ``app.clinic_id``.

A frozen snapshot: never import the models here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_TABLES = ("export_jobs", "export_files")
POLICY = "clinic_isolation"
CURRENT_CLINIC = "(SELECT NULLIF(current_setting('app.clinic_id', true), '')::uuid)"


def _stamp(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    ]


def _clinic_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["clinic_id"],
        ["clinics.id"],
        name=op.f(f"fk_{table}_clinic_id_clinics"),
        ondelete="RESTRICT",
    )


def upgrade() -> None:
    op.create_table(
        "export_jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("requested_by", sa.Uuid(), nullable=False),
        sa.Column("requester_role", sa.String(length=32), nullable=False),
        sa.Column("resource_type", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("request_url", sa.String(length=500), nullable=False),
        _stamp("changed_since"),
        sa.Column("cursor", sa.String(length=512), nullable=True),
        sa.Column("exported", sa.Integer(), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("failure", sa.String(length=200), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        _stamp("lease_expires"),
        _stamp("finished_at"),
        _stamp("expires_at"),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("clinic_id", sa.Uuid(), nullable=False),
        *_timestamps(),
        _clinic_fk("export_jobs"),
        sa.ForeignKeyConstraint(
            ["clinic_id", "requested_by"],
            ["users.clinic_id", "users.id"],
            name=op.f("fk_export_jobs_clinic_id_requested_by_users"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_jobs")),
        sa.UniqueConstraint("clinic_id", "id", name=op.f("uq_export_jobs_clinic_id_id")),
    )
    op.create_index(op.f("ix_export_jobs_clinic_id"), "export_jobs", ["clinic_id"], unique=False)

    op.create_table(
        "export_files",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("resource_type", sa.String(length=32), nullable=False),
        sa.Column("resources", sa.Integer(), nullable=False),
        sa.Column("ndjson", sa.Text(), nullable=False),
        sa.Column("clinic_id", sa.Uuid(), nullable=False),
        *_timestamps(),
        _clinic_fk("export_files"),
        sa.ForeignKeyConstraint(
            ["clinic_id", "job_id"],
            ["export_jobs.clinic_id", "export_jobs.id"],
            name=op.f("fk_export_files_clinic_id_job_id_export_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_files")),
        sa.UniqueConstraint("job_id", "seq", name=op.f("uq_export_files_job_id_seq")),
    )
    op.create_index(op.f("ix_export_files_clinic_id"), "export_files", ["clinic_id"], unique=False)

    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TENANT_TABLES:
        op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
        op.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')
        op.execute(
            f'CREATE POLICY {POLICY} ON "{table}" FOR ALL '
            f"USING (clinic_id = {CURRENT_CLINIC}) "
            f"WITH CHECK (clinic_id = {CURRENT_CLINIC})"
        )


def downgrade() -> None:
    # Dropping the tables drops their policies with them.
    op.drop_table("export_files")
    op.drop_table("export_jobs")
