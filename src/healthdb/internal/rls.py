"""The database wall (PostgreSQL): row-level security on every tenant table and on
``clinics`` (migrations 0002, 0008), the clinic set per transaction with
:data:`SET_CLINIC`, and :func:`verify_database_wall`, which refuses to let the service run
as a role that could bypass it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from healthdb.errors import UnsafeDatabaseRole
from healthdb.models.base import tenant_tables

CLINIC_SETTING = "app.clinic_id"
RLS_POLICY = "clinic_isolation"
_CURRENT_CLINIC = f"(SELECT NULLIF(current_setting('{CLINIC_SETTING}', true), '')::uuid)"
#: The one expression every tenant table's policy must hold, for USING and WITH CHECK alike
#: (migration 0002 keeps its own frozen copy). The setting is read in a scalar subquery so it
#: is evaluated once per statement; '' (a reset transaction-local value) and NULL match nothing.
POLICY_EXPRESSION = f"clinic_id = {_CURRENT_CLINIC}"
#: ``clinics`` is keyed by its own id: a clinic's row is written only in that clinic's scope.
CLINIC_POLICY_EXPRESSION = f"id = {_CURRENT_CLINIC}"
#: The column each walled table is matched on besides the tenant tables' ``clinic_id``.
OTHER_WALLED = {"clinics": "id"}
#: The permissive policies besides ``clinic_isolation`` that apply to the runtime role, as
#: (command, USING as deparsed), required exactly: reading the clinic directory, which the
#: rate limiter and key rotation need before any scope (migration 0008).
ALLOWED_POLICIES: Mapping[str, Mapping[str, tuple[str, str]]] = {
    "clinics": {"clinic_directory": ("SELECT", "true")}
}
#: The login lookup that runs before a clinic is known (migration 0008): SECURITY DEFINER,
#: owned by the owner of ``user_logins``, this exact body. Anything else is refused, since
#: a wider body would read past the wall.
LOGIN_FUNCTION = "healthdb_login_route"
LOGIN_FUNCTION_BODY = (
    "SELECT l.user_id, l.clinic_id FROM public.user_logins AS l WHERE l.email = p_email"
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
           c.relforcerowsecurity AS forced
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
       AND c.relname = ANY(:tables)
     ORDER BY c.relname
    """
)

# The permissive policies that bind this role: those for PUBLIC (role 0) or for a role it
# is a member of. A policy for another role (the owner's login lookup) does not apply here.
_POLICIES = text(
    """
    SELECT c.relname AS table_name, p.polname AS name, p.polcmd::text AS cmd,
           pg_get_expr(p.polqual, p.polrelid) AS qual,
           pg_get_expr(p.polwithcheck, p.polrelid) AS with_check
      FROM pg_policy p
      JOIN pg_class c ON c.oid = p.polrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = current_schema() AND c.relname = ANY(:tables) AND p.polpermissive
       AND EXISTS (
           SELECT 1 FROM unnest(p.polroles) AS r(oid)
            WHERE r.oid = 0 OR pg_has_role(current_user, r.oid, 'MEMBER')
       )
     ORDER BY 1, 2
    """
)

_LOGIN_FUNCTION = text(
    """
    SELECT p.prosecdef AS definer, p.prosrc AS body, p.proconfig AS config,
           p.proowner = t.relowner AS owned_by_owner
      FROM pg_proc p
      JOIN pg_namespace n ON n.oid = p.pronamespace
      JOIN pg_class t ON t.relname = :table AND t.relnamespace = n.oid
     WHERE n.nspname = current_schema() AND p.proname = :name
    """
)

_POLICY_COMMANDS = {"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}

# PostgreSQL stores a policy as a parse tree and shows it deparsed (casts spelled out, a
# column alias added); comparing with our source text would need to mimic that for every
# server version. Instead the server deparses the expected expressions itself, on policies
# of a throw-away temporary table, in a transaction that is rolled back.
_PROBE_TABLE = "healthdb_policy_probe"
_PROBE = (
    f"CREATE TEMP TABLE {_PROBE_TABLE} (clinic_id uuid, id uuid) ON COMMIT DROP",
    f"CREATE POLICY clinic_id ON {_PROBE_TABLE} FOR ALL USING ({POLICY_EXPRESSION})",
    f"CREATE POLICY id ON {_PROBE_TABLE} FOR ALL USING ({CLINIC_POLICY_EXPRESSION})",
)
# pg_temp names this session's own temporary schema, not another process's probe.
_PROBED = text(
    "SELECT polname, pg_get_expr(polqual, polrelid) FROM pg_policy "
    "WHERE polrelid = 'pg_temp.healthdb_policy_probe'::regclass"
)

_HINT = (
    "; run the service as a role that owns nothing and has neither SUPERUSER nor BYPASSRLS "
    "(`healthdb migrate` with HEALTHDB_ADMIN_DATABASE_URL naming the owner creates one from "
    "HEALTHDB_DATABASE_URL)"
)
_MIGRATE = "; run `healthdb migrate`"


def walled_tables() -> dict[str, str]:
    """``{table: the column its clinic_isolation policy matches}`` for every table behind
    the database wall: the tenant tables (``clinic_id``) and ``clinics`` (``id``)."""
    return {**dict.fromkeys(tenant_tables(), "clinic_id"), **OTHER_WALLED}


async def verify_database_wall(conn: AsyncConnection) -> None:
    """Raise :class:`UnsafeDatabaseRole` unless row-level security binds this connection's role.

    Refused: a SUPERUSER or BYPASSRLS role; a role that owns (or is a member of the owner of)
    a walled table (:func:`walled_tables`); a walled table without ENABLE + FORCE ROW LEVEL
    SECURITY, without its ``clinic_isolation`` policy on ``app.clinic_id`` (compared whole),
    or with another permissive policy that applies to this role, except those listed in
    :data:`ALLOWED_POLICIES` exactly; and a login lookup function that is not the narrow
    SECURITY DEFINER one of migration 0008. Tables that do not exist yet (an unmigrated
    database) are skipped: they hold no rows, and readiness reports the missing migration.
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
    expected = await _deparsed_policies(conn)
    walled = walled_tables()
    tables = {"tables": list(walled)}
    policies: dict[str, list[Any]] = {}
    for policy in (await conn.execute(_POLICIES, tables)).all():
        policies.setdefault(policy.table_name, []).append(policy)
    found = (await conn.execute(_TABLES, tables)).all()
    for table in found:
        if table.owned:
            raise UnsafeDatabaseRole(
                f"database role {role.name!r} owns table {table.name!r} behind the wall (an "
                "owner can turn row-level security off)" + _HINT
            )
        if not (table.enabled and table.forced):
            raise UnsafeDatabaseRole(
                f"table {table.name!r} lacks ENABLE + FORCE ROW LEVEL SECURITY" + _MIGRATE
            )
        _check_policies(table.name, policies.get(table.name, []), expected[walled[table.name]])
    if "user_logins" in {table.name for table in found}:
        await _check_login_function(conn)


def _check_policies(table: str, policies: Sequence[Any], expected: str) -> None:
    wall = [p for p in policies if p.name == RLS_POLICY]
    if not wall or (wall[0].cmd, wall[0].qual, wall[0].with_check) != ("*", expected, expected):
        source = CLINIC_POLICY_EXPRESSION if table in OTHER_WALLED else POLICY_EXPRESSION
        raise UnsafeDatabaseRole(
            f"table {table!r} lacks its {RLS_POLICY!r} row-level security policy, or the "
            f"policy is not exactly `{source}` for every command (USING and WITH CHECK)" + _MIGRATE
        )
    allowed = ALLOWED_POLICIES.get(table, {})
    wider = [
        p.name
        for p in policies
        if p.name != RLS_POLICY and allowed.get(p.name) != (_POLICY_COMMANDS.get(p.cmd), p.qual)
    ]
    if wider:
        raise UnsafeDatabaseRole(
            f"table {table!r} has other permissive row-level security policies "
            f"({', '.join(wider)}) that widen {RLS_POLICY!r}"
        )
    missing = sorted(set(allowed) - {p.name for p in policies})
    if missing:  # the service reads through them (the clinic directory): not optional
        raise UnsafeDatabaseRole(
            f"table {table!r} lacks its {', '.join(missing)} row-level security policy" + _MIGRATE
        )


async def _check_login_function(conn: AsyncConnection) -> None:
    # The table name travels as a parameter: the connection wall refuses SQL text naming it.
    params = {"name": LOGIN_FUNCTION, "table": "user_logins"}
    found = (await conn.execute(_LOGIN_FUNCTION, params)).all()
    config = (found[0].config or []) if len(found) == 1 else []
    if not (
        len(found) == 1
        and found[0].definer
        and found[0].owned_by_owner
        and " ".join(found[0].body.split()) == LOGIN_FUNCTION_BODY
        and any(setting.startswith("search_path=") for setting in config)
    ):
        raise UnsafeDatabaseRole(
            f"the login lookup function {LOGIN_FUNCTION}(text) is missing or is not the "
            "narrow SECURITY DEFINER function of migration 0008 (owned by the owner of "
            "user_logins, with a pinned search_path, returning one address's row)" + _MIGRATE
        )


async def _deparsed_policies(conn: AsyncConnection) -> dict[str, str]:
    """``{key column: its clinic_isolation expression as this server deparses it}``."""
    try:
        for statement in _PROBE:
            await conn.exec_driver_sql(statement)
        return {str(name): str(expr) for name, expr in (await conn.execute(_PROBED)).all()}
    except DBAPIError as exc:
        raise UnsafeDatabaseRole(
            "cannot check the row-level security policies: creating a temporary probe table "
            f"failed ({type(exc.orig).__name__}); the runtime role needs TEMPORARY on the "
            "database, which `healthdb migrate` grants"
        ) from exc
    finally:
        await conn.rollback()
