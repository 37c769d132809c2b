"""Schema migrations: a small async API over the packaged Alembic history.

One history serves SQLite and PostgreSQL. :func:`upgrade` is idempotent and safe to run
from several processes at once: on PostgreSQL it serialises on a transaction-scoped
advisory lock, on SQLite on the database write lock (``BEGIN IMMEDIATE``). Either way the
whole upgrade is one transaction, so a failed migration leaves the schema untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from healthdb.models import Base
from healthdb.settings import Settings

__all__ = [
    "ADVISORY_LOCK_KEY",
    "check_models_match",
    "context_options",
    "current_revision",
    "head_revision",
    "is_at_head",
    "upgrade",
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
