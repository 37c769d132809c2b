"""Every table behind the database wall; platform operators.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

``user_logins`` holds a ``clinic_id`` but had no row-level security: with no clinic set the
runtime role read every clinic's staff e-mails and could change or delete them. It becomes
a tenant table (an index and a foreign key on ``clinic_id``) with ENABLE + FORCE ROW LEVEL
SECURITY and the same ``clinic_isolation`` policy as every other tenant table.

The login lookup runs before a clinic is known. It goes through one function,
``healthdb_login_route(email)``, ``SECURITY DEFINER`` and owned by the owner: it returns the
``(user_id, clinic_id)`` of exactly one address (the primary key), never a list, and the
runtime role may only EXECUTE it (``healthdb migrate`` grants that; PUBLIC may not). The
function runs as the owner, which forced RLS binds too, so a second policy,
``login_lookup``, lets *the owner role only* (``TO CURRENT_USER`` at migration time) read
the table; the runtime role is not a member of it (the start-up check refuses one that is).
Its ``search_path`` is pinned so nobody can shadow the table with another.

``clinics`` rows become writable only inside their own clinic scope: ENABLE + FORCE ROW
LEVEL SECURITY with ``clinic_isolation`` on ``id`` for every command, so an INSERT, UPDATE
or DELETE with no clinic set (or another clinic set) touches nothing. Reading the clinic
directory stays open (``clinic_directory``: SELECT only, ``USING (true)``): the rate limiter
reads a clinic's budget before its scope exists, key rotation walks every clinic, and no
route hands a clinic row to another clinic. Platform operations on clinics go through the
owner, from the command line.

``platform_operators`` (both backends): the operators who may read operational figures
across clinics; no ``clinic_id``, read-only for the runtime role, written from the CLI only.

The RLS parts are PostgreSQL-only, as in 0002; SQLite has no database wall. A frozen
snapshot: the names and expressions are spelled out here, never read from the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_CLINIC = "(SELECT NULLIF(current_setting('app.clinic_id', true), '')::uuid)"
LOGIN_FUNCTION = "healthdb_login_route"
# Keep in step with healthdb.internal.rls.LOGIN_FUNCTION_BODY (the start-up check).
LOGIN_BODY = "SELECT l.user_id, l.clinic_id FROM public.user_logins AS l WHERE l.email = p_email"


def upgrade() -> None:
    op.create_index("ix_user_logins_clinic_id", "user_logins", ["clinic_id"])
    with op.batch_alter_table("user_logins") as batch:
        batch.create_foreign_key(
            "fk_user_logins_clinic_id_clinics",
            "clinics",
            ["clinic_id"],
            ["id"],
            ondelete="RESTRICT",
        )
    op.create_table(
        "platform_operators",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_platform_operators"),
        sa.UniqueConstraint("name", name="uq_platform_operators_name"),
        sa.UniqueConstraint("key_hash", name="uq_platform_operators_key_hash"),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    _wall("user_logins", "clinic_id")
    op.execute("CREATE POLICY login_lookup ON user_logins FOR SELECT TO CURRENT_USER USING (true)")
    op.execute(
        f"CREATE FUNCTION {LOGIN_FUNCTION}(p_email text) "
        "RETURNS TABLE (user_id uuid, clinic_id uuid) "
        "LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp "
        f"AS $fn${LOGIN_BODY}$fn$"
    )
    op.execute(f"REVOKE ALL ON FUNCTION {LOGIN_FUNCTION}(text) FROM PUBLIC")
    _wall("clinics", "id")
    op.execute("CREATE POLICY clinic_directory ON clinics FOR SELECT USING (true)")


def _wall(table: str, key: str) -> None:
    op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
    op.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')
    op.execute(
        f'CREATE POLICY clinic_isolation ON "{table}" FOR ALL '
        f"USING ({key} = {CURRENT_CLINIC}) WITH CHECK ({key} = {CURRENT_CLINIC})"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, policies in (
            ("clinics", ("clinic_directory", "clinic_isolation")),
            ("user_logins", ("login_lookup", "clinic_isolation")),
        ):
            for policy in policies:
                op.execute(f'DROP POLICY IF EXISTS {policy} ON "{table}"')
            op.execute(f'ALTER TABLE "{table}" NO FORCE ROW LEVEL SECURITY')
            op.execute(f'ALTER TABLE "{table}" DISABLE ROW LEVEL SECURITY')
        op.execute(f"DROP FUNCTION IF EXISTS {LOGIN_FUNCTION}(text)")
    op.drop_table("platform_operators")
    with op.batch_alter_table("user_logins") as batch:
        batch.drop_constraint("fk_user_logins_clinic_id_clinics", type_="foreignkey")
    op.drop_index("ix_user_logins_clinic_id", table_name="user_logins")
