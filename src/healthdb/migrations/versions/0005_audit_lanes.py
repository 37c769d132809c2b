"""Audit chains split into lanes per clinic.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

Every PHI access appends to its clinic's hash chain inside its own transaction, holding the
chain's lock until COMMIT, so one chain per clinic serialised every PHI read of a clinic
(measured: the audited read ran at 0.23x of the same read unaudited under 64 concurrent
readers). A clinic now has up to ``HEALTHDB_AUDIT_LANES`` independent chains ("lanes"); an
append takes the first free lane. ``lane`` is not sealed into ``row_hash`` (existing rows,
all lane 0, keep verifying): moving a row to another lane breaks both lanes' links, which
verify reports. Adding a column with a constant default does not rebuild the SQLite table,
so migration 0003's triggers stay.

A frozen snapshot: never import the models here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_INDEX = "ix_audit_events_clinic_id_seq"
NEW_INDEX = "ix_audit_events_clinic_id_lane_seq"


def upgrade() -> None:
    op.add_column(
        "audit_events",
        sa.Column("lane", sa.SmallInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.drop_index(OLD_INDEX, table_name="audit_events")
    op.create_index(NEW_INDEX, "audit_events", ["clinic_id", "lane", "seq"], unique=True)


def downgrade() -> None:
    op.drop_index(NEW_INDEX, table_name="audit_events")
    op.create_index(OLD_INDEX, "audit_events", ["clinic_id", "seq"], unique=True)
    op.drop_column("audit_events", "lane")
