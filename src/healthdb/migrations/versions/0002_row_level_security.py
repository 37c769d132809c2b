"""Row-level security on every tenant table (PostgreSQL only).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

The database wall: ``ENABLE`` + ``FORCE ROW LEVEL SECURITY`` (so even the owner is subject
to it) and one policy per tenant table, for every command, on the clinic set per
transaction with ``set_config('app.clinic_id', <uuid>, true)``. No clinic set → the setting
is NULL (or '' once a transaction-local value has been reset) → ``clinic_id = NULL`` is
never true: zero rows on read, every write refused (fail closed).

The setting is read in a scalar subquery so PostgreSQL evaluates it once per statement
(an InitPlan), not once per row, and the ``clinic_id`` indexes stay usable.

A frozen snapshot: the table list is spelled out here, never read from the models.
SQLite has no row-level security; there the ORM wall stands alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_TABLES = ("users", "refresh_tokens", "patients", "appointments", "audit_events")
POLICY = "clinic_isolation"
CURRENT_CLINIC = "(SELECT NULLIF(current_setting('app.clinic_id', true), '')::uuid)"


def upgrade() -> None:
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
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in reversed(TENANT_TABLES):
        op.execute(f'DROP POLICY IF EXISTS {POLICY} ON "{table}"')
        op.execute(f'ALTER TABLE "{table}" NO FORCE ROW LEVEL SECURITY')
        op.execute(f'ALTER TABLE "{table}" DISABLE ROW LEVEL SECURITY')
