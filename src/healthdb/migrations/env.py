"""Alembic environment for healthdb.

Run through :mod:`healthdb.migrate`, which opens the connection (async engine, advisory
lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) and passes it in
``config.attributes["connection"]``. Offline (``--sql``) mode needs ``sqlalchemy.url``.
No logging is configured here: that is the application's business.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from healthdb.migrate import context_options

config = context.config


def run_migrations_offline() -> None:
    """Emit the migration SQL as a script instead of running it."""
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("offline migrations need the 'sqlalchemy.url' option")
    dialect = url.split(":", 1)[0].split("+", 1)[0]
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **context_options(dialect),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online(connection: Connection) -> None:
    """Migrate over the caller's connection, inside the caller's transaction."""
    context.configure(connection=connection, **context_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    _connection = config.attributes.get("connection")
    if not isinstance(_connection, Connection):
        raise RuntimeError(
            "healthdb migrations run through healthdb.migrate.upgrade(), "
            "which supplies config.attributes['connection']"
        )
    run_migrations_online(_connection)
