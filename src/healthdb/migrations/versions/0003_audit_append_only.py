"""Append-only, sequenced audit events.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

The database refuses to change audit history, whoever asks: a trigger raises on every
UPDATE or DELETE of ``audit_events`` (and, on PostgreSQL, on TRUNCATE), on top of the
runtime role holding only SELECT/INSERT there. Only the owner can get past it, and only by
disabling (PostgreSQL) or dropping (SQLite) the trigger; the hash chain
(:mod:`healthdb.internal.audit`) makes that tampering evident. A unique index on
``(clinic_id, seq)`` gives each clinic's chain one row per position.

Both backends raise an integrity error (SQLSTATE 23001 ``restrict_violation``; SQLite
``SQLITE_CONSTRAINT_TRIGGER``). SQLite note: a later batch-mode rebuild of
``audit_events`` drops its triggers, so such a migration must re-create them.

A frozen snapshot: never import the models here.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MESSAGE = "audit_events is append-only"
FUNCTION = "audit_events_append_only"
ROW_TRIGGER = "audit_events_append_only"
TRUNCATE_TRIGGER = "audit_events_no_truncate"
SQLITE_TRIGGERS = {
    "audit_events_no_update": "UPDATE",
    "audit_events_no_delete": "DELETE",
}
INDEX = "ix_audit_events_clinic_id_seq"


def upgrade() -> None:
    op.create_index(INDEX, "audit_events", ["clinic_id", "seq"], unique=True)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
            "BEGIN\n"
            f"    RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'restrict_violation';\n"
            "END\n"
            "$fn$"
        )
        op.execute(
            f"CREATE TRIGGER {ROW_TRIGGER} BEFORE UPDATE OR DELETE ON audit_events "
            f"FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()"
        )
        op.execute(
            f"CREATE TRIGGER {TRUNCATE_TRIGGER} BEFORE TRUNCATE ON audit_events "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
        )
        return
    for name, verb in SQLITE_TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {name} BEFORE {verb} ON audit_events "
            f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON audit_events")
        op.execute(f"DROP TRIGGER IF EXISTS {ROW_TRIGGER} ON audit_events")
        op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_index(INDEX, table_name="audit_events")
