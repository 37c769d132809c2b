"""Schema migrations: a small async API over the packaged Alembic history.

One history serves SQLite and PostgreSQL. :func:`upgrade` is idempotent and safe to run
from several processes at once: on PostgreSQL it serialises on a transaction-scoped
advisory lock, on SQLite on the database write lock (``BEGIN IMMEDIATE``). Either way the
whole upgrade is one transaction, so a failed migration leaves the schema untouched.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from healthdb.errors import InvalidInput
from healthdb.models import Base
from healthdb.models.base import tenant_tables
from healthdb.settings import Settings

__all__ = [
    "ADVISORY_LOCK_KEY",
    "check_models_match",
    "context_options",
    "current_revision",
    "head_revision",
    "is_at_head",
    "provision_runtime_role",
    "upgrade",
    "upgrade_with_role",
]

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")

# Fixed key for pg_advisory_xact_lock: the bytes of "healthdb" as a signed 64-bit integer.
ADVISORY_LOCK_KEY = int.from_bytes(b"healthdb", "big", signed=True)

_SQLITE_IMMEDIATE = "healthdb_migrate_immediate"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def context_options(dialect_name: str) -> dict[str, Any]:
    """Options for ``EnvironmentContext.configure`` / ``MigrationContext.configure``.

    Shared by ``env.py`` and :func:`check_models_match`, so that what the migration
    environment considers "in sync" is exactly what the drift check tests.
    """
    return {
        "target_metadata": Base.metadata,
        "render_as_batch": dialect_name == "sqlite",
        "compare_type": True,
    }


def _migration_engine(url: str) -> AsyncEngine:
    """A throwaway engine (no pool) for migrating; not the runtime engine."""
    settings = Settings(database_url=url)
    url = settings.url
    if settings.is_postgres:
        return create_async_engine(
            url,
            poolclass=NullPool,
            connect_args={"server_settings": {"application_name": "healthdb-migrate"}},
        )
    engine = create_async_engine(url, poolclass=NullPool)
    busy_timeout_ms = int(settings.sqlite_busy_timeout_ms)

    # pysqlite's implicit transactions skip DDL; take control of BEGIN so the
    # whole upgrade is one transaction. Foreign keys stay off (the default) so
    # batch-mode table rebuilds cannot trip over references.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_SQLITE_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _upgrade_sync(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        # Held until the surrounding transaction ends: a concurrent upgrader waits
        # here, then finds the schema already at the target revision.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    command.upgrade(_config(connection), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (default: the latest).

    Accepts ``postgresql[+asyncpg]://`` and ``sqlite[+aiosqlite]:///`` URLs. Idempotent,
    transactional, and safe to run concurrently from several processes.
    """
    engine = _migration_engine(url)
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(**{_SQLITE_IMMEDIATE: True})
            async with conn.begin():
                await conn.run_sync(_upgrade_sync, revision)
    finally:
        await engine.dispose()


def head_revision() -> str:
    """The newest revision in the packaged migration history."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise RuntimeError("the migration history is empty")
    return head


def _current_revision_sync(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database behind ``engine`` is at; ``None`` when unmigrated."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current_revision_sync)


async def is_at_head(engine: AsyncEngine) -> bool:
    """True when the database behind ``engine`` is at :func:`head_revision`."""
    return await current_revision(engine) == head_revision()


def _diff_sync(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts=context_options(connection.dialect.name))
    return list(compare_metadata(context, Base.metadata))


async def check_models_match(url: str) -> list[object]:
    """Autogenerate differences between the database at ``url`` and the models.

    An empty list means the schema matches :data:`healthdb.models.Base.metadata`;
    anything else means a migration has drifted from the models (or is missing).
    """
    engine = _migration_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_diff_sync)
    finally:
        await engine.dispose()


# -- the runtime role ---------------------------------------------------------------------------

ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Tables the runtime role reads and writes besides the tenant tables: under row-level
# security too, keyed by their own id (migration 0008).
SHARED_TABLES = ("clinics",)
# Append-only in the database: the runtime role may add audit rows, never change them.
APPEND_ONLY_TABLES = ("audit_events",)
# Read only: operators are created from the CLI through the owner; readiness reads the
# revision.
READ_ONLY_TABLES = ("platform_operators", "alembic_version")
# The only functions the runtime role may call: the login lookup (migration 0008).
FUNCTIONS = ("healthdb_login_route(text)",)


def _role_of(url: str) -> tuple[str | None, str | None]:
    parsed = make_url(Settings(database_url=url).url)
    return parsed.username, parsed.password


def _provision_sync(connection: Connection, role: str, password: str | None) -> None:
    # Validated against ROLE_NAME, so double-quoting is exact; everything else (database
    # name, password) is quoted by the server's own format() with %I / %L.
    quoted = f'"{role}"'

    def run(template: str, *args: str) -> None:
        params = {f"a{i}": arg for i, arg in enumerate(args)}
        placeholders = "".join(f", CAST(:a{i} AS text)" for i in range(len(args)))
        sql = connection.execute(
            text(f"SELECT format(:t{placeholders})"), {"t": template, **params}
        )
        connection.exec_driver_sql(str(sql.scalar_one()))

    exists = connection.execute(
        text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
    ).first()
    attributes = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION"
    verb = "ALTER" if exists else "CREATE"
    if password is None:
        connection.exec_driver_sql(f"{verb} ROLE {quoted} {attributes}")
    else:
        run(f"{verb} ROLE {quoted} {attributes} PASSWORD %L", password)
    run(f"GRANT CONNECT, TEMPORARY ON DATABASE %I TO {quoted}", _current_database(connection))
    connection.exec_driver_sql(f"GRANT USAGE ON SCHEMA public TO {quoted}")
    # Start from nothing on every run, so a grant that is no longer needed does not linger.
    connection.exec_driver_sql(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {quoted}")
    connection.exec_driver_sql(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {quoted}")
    connection.exec_driver_sql(f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM {quoted}")
    read_write = [t for t in (*tenant_tables(), *SHARED_TABLES) if t not in APPEND_ONLY_TABLES]
    for table in read_write:
        connection.exec_driver_sql(
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE "{table}" TO {quoted}'
        )
    for table in APPEND_ONLY_TABLES:
        connection.exec_driver_sql(f'GRANT SELECT, INSERT ON TABLE "{table}" TO {quoted}')
    existing = _existing_tables(connection)
    for table in READ_ONLY_TABLES:
        if table in existing:  # provisioning may follow an upgrade to an older revision
            connection.exec_driver_sql(f'GRANT SELECT ON TABLE "{table}" TO {quoted}')
    for function in FUNCTIONS:
        if connection.execute(text("SELECT to_regprocedure(:f)"), {"f": function}).scalar():
            connection.exec_driver_sql(f"GRANT EXECUTE ON FUNCTION {function} TO {quoted}")


def _existing_tables(connection: Connection) -> set[str]:
    rows = connection.execute(
        text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    )
    return {str(name) for (name,) in rows}


def _current_database(connection: Connection) -> str:
    return str(connection.execute(text("SELECT current_database()")).scalar_one())


async def provision_runtime_role(admin_url: str, runtime_url: str) -> None:
    """Create the runtime role named by ``runtime_url`` (or update its password, attributes
    and grants), connecting with ``admin_url`` — the owner that ran the migrations.

    The role can log in and owns nothing; it has neither SUPERUSER nor BYPASSRLS (so
    row-level security binds it), nor CREATEDB, CREATEROLE or REPLICATION. It holds exactly:
    CONNECT and TEMPORARY (bulk-insert staging) on the database, USAGE on schema ``public``,
    SELECT/INSERT/UPDATE/DELETE on the tenant tables and on ``clinics`` (all under forced
    row-level security), only SELECT/INSERT on ``audit_events`` (append-only), SELECT on
    ``platform_operators`` and ``alembic_version`` (readiness), and EXECUTE on the login
    lookup function and no other. Idempotent: every other table and function privilege is
    revoked and re-granted in one transaction, serialised with migrations on the advisory
    lock. PostgreSQL only.
    """
    role, password = _role_of(runtime_url)
    if not Settings(database_url=admin_url).is_postgres or not role:
        raise InvalidInput("provisioning a runtime role needs two PostgreSQL URLs with a user")
    if not ROLE_NAME.fullmatch(role):
        raise InvalidInput("the runtime role name must match ^[a-z_][a-z0-9_]{0,62}$")
    if role == _role_of(admin_url)[0]:
        raise InvalidInput("the runtime role must differ from the owner (admin) role")
    engine = _migration_engine(admin_url)
    try:
        async with engine.connect() as conn, conn.begin():
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            )
            await conn.run_sync(_provision_sync, role, password)
    finally:
        await engine.dispose()


def needs_runtime_role(settings: Settings) -> bool:
    """True when migrating should also provision the runtime role: both URLs PostgreSQL,
    with different users."""
    if not (settings.is_postgres and settings.admin_url.startswith("postgresql")):
        return False
    runtime, admin = _role_of(settings.url)[0], _role_of(settings.admin_url)[0]
    return bool(runtime) and runtime != admin


async def upgrade_with_role(settings: Settings, revision: str = "head") -> None:
    """``healthdb migrate``: migrate with the admin (owner) URL, then provision the runtime
    role of ``HEALTHDB_DATABASE_URL`` when it is a different PostgreSQL user."""
    await upgrade(settings.admin_url, revision)
    if needs_runtime_role(settings):
        await provision_runtime_role(settings.admin_url, settings.url)
