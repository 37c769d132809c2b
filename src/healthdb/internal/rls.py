"""The database wall (PostgreSQL): row-level security on every tenant table (migration
0002), the clinic set per transaction with :data:`SET_CLINIC`, and
:func:`verify_database_wall`, which refuses to let the service run as a role that could
bypass it."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from healthdb.errors import UnsafeDatabaseRole
from healthdb.models.base import tenant_tables

CLINIC_SETTING = "app.clinic_id"
RLS_POLICY = "clinic_isolation"
#: The one expression every tenant table's policy must hold, for USING and WITH CHECK alike
#: (migration 0002 keeps its own frozen copy). The setting is read in a scalar subquery so it
#: is evaluated once per statement; '' (a reset transaction-local value) and NULL match nothing.
POLICY_EXPRESSION = (
    f"clinic_id = (SELECT NULLIF(current_setting('{CLINIC_SETTING}', true), '')::uuid)"
)

#: Transaction-local (``is_local => true``): gone at COMMIT/ROLLBACK, so a pooled connection
#: never carries a clinic outside the transaction that set it (and PgBouncer in transaction
#: mode needs nothing more).
SET_CLINIC = text(f"SELECT set_config('{CLINIC_SETTING}', :clinic_id, true)")


_ROLE = text(
    "SELECT current_user AS name, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
)

_TABLES = text(
    """
    SELECT c.relname AS name,
           pg_has_role(current_user, c.relowner, 'MEMBER') AS owned,
           c.relrowsecurity AS enabled,
           c.relforcerowsecurity AS forced,
           EXISTS (
               SELECT 1 FROM pg_policies p
                WHERE p.schemaname = n.nspname AND p.tablename = c.relname
                  AND p.policyname = :policy AND p.cmd = 'ALL'
                  AND p.qual = :expected AND p.with_check = :expected
           ) AS has_policy,
           ARRAY(
               SELECT p.policyname::text FROM pg_policies p
                WHERE p.schemaname = n.nspname AND p.tablename = c.relname
                  AND p.permissive = 'PERMISSIVE' AND p.policyname <> :policy
                ORDER BY 1
           ) AS other_permissive
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
       AND c.relname = ANY(:tables)
     ORDER BY c.relname
    """
)

# PostgreSQL stores a policy as a parse tree and shows it deparsed (casts spelled out, a
# column alias added); comparing with our source text would need to mimic that for every
# server version. Instead the server deparses the expected expression itself, on a policy
# of a throw-away temporary table, in a transaction that is rolled back.
_PROBE_TABLE = "healthdb_policy_probe"
_PROBE = (
    f"CREATE TEMP TABLE {_PROBE_TABLE} (clinic_id uuid) ON COMMIT DROP",
    f"CREATE POLICY {RLS_POLICY} ON {_PROBE_TABLE} FOR ALL USING ({POLICY_EXPRESSION})",
)
# pg_temp names this session's own temporary schema, not another process's probe.
_PROBED = text(
    "SELECT pg_get_expr(polqual, polrelid) FROM pg_policy "
    "WHERE polrelid = 'pg_temp.healthdb_policy_probe'::regclass"
)

_HINT = (
    "; run the service as a role that owns nothing and has neither SUPERUSER nor BYPASSRLS "
    "(`healthdb migrate` with HEALTHDB_ADMIN_DATABASE_URL naming the owner creates one from "
    "HEALTHDB_DATABASE_URL)"
)


async def verify_database_wall(conn: AsyncConnection) -> None:
    """Raise :class:`UnsafeDatabaseRole` unless row-level security binds this connection's role.

    Refused: a SUPERUSER or BYPASSRLS role, a role that owns (or is a member of the owner of)
    a tenant table, and a tenant table without ENABLE + FORCE ROW LEVEL SECURITY, without the
    ``clinic_isolation`` policy on ``app.clinic_id``, or with another permissive policy (which
    would widen it). Tenant tables that do not exist yet (an unmigrated database) are skipped:
    they hold no rows, and readiness reports the missing migration.
    """
    role = (await conn.execute(_ROLE)).one()
    if role.rolsuper:
        raise UnsafeDatabaseRole(
            f"database role {role.name!r} is a SUPERUSER, which bypasses row-level security" + _HINT
        )
    if role.rolbypassrls:
        raise UnsafeDatabaseRole(
            f"database role {role.name!r} has BYPASSRLS, which bypasses row-level security" + _HINT
        )
    params = {
        "policy": RLS_POLICY,
        "expected": await _deparsed_policy(conn),
        "tables": list(tenant_tables()),
    }
    for table in (await conn.execute(_TABLES, params)).all():
        if table.owned:
            raise UnsafeDatabaseRole(
                f"database role {role.name!r} owns tenant table {table.name!r} (an owner can "
                "turn row-level security off)" + _HINT
            )
        if not (table.enabled and table.forced):
            raise UnsafeDatabaseRole(
                f"tenant table {table.name!r} lacks ENABLE + FORCE ROW LEVEL SECURITY; "
                "run `healthdb migrate`"
            )
        if not table.has_policy:
            raise UnsafeDatabaseRole(
                f"tenant table {table.name!r} lacks its {RLS_POLICY!r} row-level security "
                f"policy, or the policy is not exactly `{POLICY_EXPRESSION}` for every command "
                "(USING and WITH CHECK); run `healthdb migrate`"
            )
        if table.other_permissive:
            raise UnsafeDatabaseRole(
                f"tenant table {table.name!r} has other permissive row-level security "
                f"policies ({', '.join(table.other_permissive)}) that widen {RLS_POLICY!r}"
            )


async def _deparsed_policy(conn: AsyncConnection) -> str:
    """:data:`POLICY_EXPRESSION` as this server shows it in ``pg_policies.qual``."""
    try:
        for statement in _PROBE:
            await conn.exec_driver_sql(statement)
        return str((await conn.execute(_PROBED)).scalar_one())
    except DBAPIError as exc:
        raise UnsafeDatabaseRole(
            "cannot check the row-level security policies: creating a temporary probe table "
            f"failed ({type(exc.orig).__name__}); the runtime role needs TEMPORARY on the "
            "database, which `healthdb migrate` grants"
        ) from exc
    finally:
        await conn.rollback()
