"""Engines, pools and sessions: the only module that knows driver connection details."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry

from healthdb.driver_pool import DriverPool
from healthdb.settings import Settings

SQLITE_BEGIN = "sqlite_begin"


@dataclass(frozen=True, slots=True)
class Engines:
    """The normal pool and the break-glass pool, over the same database, and on PostgreSQL
    the driver pool of the view reads and the audit group commit."""

    primary: AsyncEngine
    critical: AsyncEngine
    driver: DriverPool | None = None

    @property
    def dialect(self) -> str:
        return self.primary.dialect.name

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    async def dispose(self) -> None:
        if self.driver is not None:
            await self.driver.close()
        await self.primary.dispose()
        await self.critical.dispose()


def create_engine(
    url: str, settings: Settings, *, pool_size: int, max_overflow: int
) -> AsyncEngine:
    """One pooled engine with every wait bounded (checkout, statement, lock)."""
    if url.startswith("postgresql"):
        engine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=settings.pool_timeout,
            pool_recycle=settings.pool_recycle,
            pool_pre_ping=settings.pool_pre_ping,
            echo=settings.echo_sql,
            # SQL parameters are PHI: never in logs, nor in the text of an exception.
            hide_parameters=True,
            connect_args=_postgres_connect_args(settings),
        )
        event.listen(engine.sync_engine.pool, "checkin", _forget_prelude)
        event.listen(engine.sync_engine.pool, "checkout", _refuse_open_transaction)
    else:
        engine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=settings.pool_timeout,
            pool_recycle=settings.pool_recycle,
            pool_pre_ping=settings.pool_pre_ping,
            echo=settings.echo_sql,
            # SQL parameters are PHI: never in logs, nor in the text of an exception.
            hide_parameters=True,
        )
        _configure_sqlite(engine, settings)
    return engine


def create_engines(settings: Settings) -> Engines:
    """The runtime role's engines: a normal pool plus a small reserved critical pool, and on
    PostgreSQL the driver pool (``read_pool_size`` connections)."""
    primary = create_engine(
        settings.url, settings, pool_size=settings.pool_size, max_overflow=settings.max_overflow
    )
    return Engines(
        primary=primary,
        critical=create_engine(
            settings.url, settings, pool_size=settings.critical_pool_size, max_overflow=0
        ),
        driver=create_driver_pool(primary, settings) if settings.is_postgres else None,
    )


def create_driver_pool(engine: AsyncEngine, settings: Settings) -> DriverPool:
    """A :class:`DriverPool` to the database of ``engine``, with its connection settings
    (the URL's own arguments, the statement and lock bounds)."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    options = _postgres_connect_args(settings)
    options.pop("connection_class")

    async def connect() -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(*cargs, **{**cparams, **options})
        return conn

    return DriverPool(
        connect=connect,
        size=settings.read_pool_size,
        timeout=settings.pool_timeout,
        recycle=settings.pool_recycle,
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit (results outlive the transaction)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=True)


@dataclass(frozen=True, slots=True)
class Sessions:
    """Read and write session factories over one pool.

    The transaction mode rides on engine-level execution options, so choosing it costs
    nothing per call: ``BEGIN READ ONLY`` for reads on PostgreSQL, ``BEGIN IMMEDIATE`` for
    writes on SQLite (take the single write lock up front instead of deadlocking on upgrade).
    """

    read: async_sessionmaker[AsyncSession]
    write: async_sessionmaker[AsyncSession]

    @classmethod
    def for_engine(cls, engine: AsyncEngine, *, session_class: type[Session]) -> Sessions:
        postgres = engine.dialect.name == "postgresql"
        read = engine.execution_options(postgresql_readonly=True) if postgres else engine
        write = engine if postgres else engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
        return cls(read=_maker(read, session_class), write=_maker(write, session_class))


def _maker(engine: AsyncEngine, session_class: type[Session]) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=session_class)


class PreludeConnection(asyncpg.Connection):  # type: ignore[misc]  # untyped asyncpg
    """An asyncpg connection that can send statements in the same message as its next BEGIN.

    SQLAlchemy's asyncpg adapter opens a transaction lazily, with a simple-protocol ``BEGIN``
    right before the first statement of a unit of work. :func:`begin_with` arms that
    ``BEGIN`` with a *prelude* (the transaction-local ``set_config`` calls, the audit lane
    lock), so they cost no round trip of their own: ``BEGIN; SELECT set_config(...)`` is
    one message and one reply. The prelude is text in the simple protocol (no parameters),
    so it must be built only from validated values (a ``uuid.UUID`` rendered by ``str()``,
    Python ints) and constants. It is used once, by the next ``BEGIN``, and forgotten when
    the unit ends (:func:`forget_prelude`) or the connection returns to the pool.
    """

    __slots__ = ("_prelude",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prelude: str | None = None

    async def execute(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,  # noqa: ASYNC109 (asyncpg's own signature)
    ) -> str:
        prelude = self._prelude
        if prelude is None or args or not query.startswith("BEGIN"):
            status: str = await super().execute(query, *args, timeout=timeout)
            return status
        self._prelude = None
        try:
            status = await super().execute(f"{query} {prelude}", timeout=timeout)
            return status
        except Exception:
            # BEGIN succeeded but the prelude failed: the server is in an aborted transaction
            # that nobody tracks (asyncpg marks the start as failed). End it here, so the
            # pooled connection is clean again, then let the error propagate.
            if not self.is_closed() and self.is_in_transaction():
                await super().execute("ROLLBACK")
            self._top_xact = None  # type: ignore[misc]  # asyncpg's own slot
            raise


def begin_with(conn: AsyncConnection, prelude: str) -> PreludeConnection | None:
    """Send ``prelude`` (semicolon-terminated SQL text, see :class:`PreludeConnection`) with
    the next ``BEGIN`` on ``conn`` (checked out: ``await session.connection()``); call it
    before the transaction's first statement. Returns the armed driver connection: hand it
    to :func:`disarm` when the unit ends, while ``conn`` is still checked out."""
    # No I/O: the pooled connection is checked out, so this is attribute access only.
    driver = conn.sync_connection.connection.driver_connection if conn.sync_connection else None
    if not isinstance(driver, PreludeConnection):
        return None
    driver._prelude = prelude
    return driver


def disarm(driver: PreludeConnection | None) -> None:
    """Drop a prelude that no ``BEGIN`` used (a unit that ran no statement)."""
    if driver is not None:
        driver._prelude = None


def _forget_prelude(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    # Belt and braces: a prelude never outlives the checkout that armed it.
    disarm(
        record.driver_connection
        if isinstance(record.driver_connection, PreludeConnection)
        else None
    )


def _refuse_open_transaction(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    # A connection must never reach its next user inside a transaction (its clinic setting
    # would come with it). SQLAlchemy ends the transactions it knows of; should one it does
    # not know of (text run on the driver) slip past, the pool discards the connection.
    driver = record.driver_connection
    if isinstance(driver, asyncpg.Connection) and driver.is_in_transaction():
        raise sa_exc.DisconnectionError("pooled connection was left inside a transaction")


def _postgres_connect_args(settings: Settings) -> dict[str, Any]:
    # Sent in the startup packet: bounds every statement and lock wait at zero extra round trips.
    return {
        "connection_class": PreludeConnection,
        "timeout": settings.pool_timeout,
        "server_settings": {
            "statement_timeout": str(settings.statement_timeout_ms),
            "lock_timeout": str(settings.lock_timeout_ms),
            "idle_in_transaction_session_timeout": str(max(settings.statement_timeout_ms * 4, 0)),
            "application_name": "healthdb",
        },
    }


def _configure_sqlite(engine: AsyncEngine, settings: Settings) -> None:
    """Foreign keys on, WAL, a busy timeout, and explicit BEGIN so writers can take
    the write lock up front (``BEGIN IMMEDIATE``) instead of deadlocking on upgrade."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(settings.sqlite_busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")
