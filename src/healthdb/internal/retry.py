"""Error translation (one place) and the retry policy for transient failures."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import structlog
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm.exc import StaleDataError
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from healthdb import errors
from healthdb.driver_pool import DriverDisconnect

log = structlog.get_logger("healthdb.retry")

SERIALIZATION_FAILURE = "40001"
DEADLOCK = "40P01"
TRANSIENT_SQLSTATES = frozenset({SERIALIZATION_FAILURE, DEADLOCK})
TIMEOUT_SQLSTATES = frozenset({"57014", "55P03"})  # statement/lock timeout
UNAVAILABLE_PREFIXES = ("08", "57P", "53")  # connection, shutdown, resources
INSUFFICIENT_PRIVILEGE = "42501"  # also raised by a row-level security WITH CHECK


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, raised by the driver or wrapped by SQLAlchemy."""
    orig = getattr(exc, "orig", None)
    for source in (exc, orig, getattr(orig, "__cause__", None)):
        code = getattr(source, "sqlstate", None) or getattr(source, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def _sqlite_message(exc: BaseException) -> str:
    return str(getattr(exc, "orig", "")).lower()


def is_unique_violation(exc: BaseException) -> bool:
    """A duplicate key (PostgreSQL 23505, SQLite "UNIQUE constraint failed")."""
    if isinstance(exc, asyncpg.PostgresError):  # raised on the driver pool's path
        return sqlstate(exc) == "23505"
    return isinstance(exc, sa_exc.IntegrityError) and (
        sqlstate(exc) == "23505" or "unique constraint" in _sqlite_message(exc)
    )


class SnapshotConflict(errors.TransientError):
    """Raised inside a unit whose snapshot turned out stale (the library's own equivalent of
    a serialization failure): the whole unit is re-run. A plain ``TransientError`` is the
    outcome *after* retries and is never retried again, so nested calls do not multiply
    their retries."""


def is_transient(exc: BaseException) -> bool:
    """Worth re-running the whole transaction: serialization failure, deadlock, SQLite busy,
    or a :class:`SnapshotConflict`."""
    if isinstance(exc, SnapshotConflict):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return sqlstate(exc) in TRANSIENT_SQLSTATES
    if isinstance(exc, sa_exc.DBAPIError):
        if sqlstate(exc) in TRANSIENT_SQLSTATES:
            return True
        return "database is locked" in _sqlite_message(exc) or "deadlock" in _sqlite_message(exc)
    return False


def translate(exc: BaseException) -> errors.HealthdbError:
    """Map a SQLAlchemy/driver exception to the library hierarchy, with no values in it."""
    if isinstance(exc, SnapshotConflict):  # retries exhausted: never retried again outside
        return errors.TransientError(str(exc), retry_after=exc.retry_after)
    if isinstance(exc, errors.HealthdbError):
        return exc
    if isinstance(exc, sa_exc.StatementError) and isinstance(exc.orig, errors.HealthdbError):
        # Raised by one of our column types (encryption) while binding or reading a value.
        return exc.orig
    if isinstance(exc, sa_exc.TimeoutError):
        return errors.PoolTimeout("no database connection became free in time", retry_after=1.0)
    if isinstance(exc, StaleDataError):
        return errors.ConflictError("the row was changed by someone else; reload and retry")
    if isinstance(exc, TimeoutError):
        return errors.QueryTimeout("the operation exceeded its time limit")
    if isinstance(exc, OSError | DriverDisconnect):
        return errors.DatabaseUnavailable("the database is unreachable")
    if isinstance(exc, asyncpg.PostgresError):
        return _translate_sql(exc, sqlstate(exc) or "", str(exc))
    if not isinstance(exc, sa_exc.DBAPIError):
        return errors.DatabaseError("unexpected database failure")
    return _translate_dbapi(exc)


def _translate_sql(exc: BaseException, code: str, message: str) -> errors.HealthdbError:
    """What every SQL error maps to by its SQLSTATE, whichever layer raised it."""
    if code in TRANSIENT_SQLSTATES or is_transient(exc):
        return errors.TransientError("the transaction kept conflicting; try again", retry_after=0.5)
    if code in TIMEOUT_SQLSTATES:
        return errors.QueryTimeout("a statement or lock wait exceeded its configured bound")
    if code.startswith("23") or isinstance(exc, sa_exc.IntegrityError):
        if is_unique_violation(exc):
            return errors.ConflictError("a row with the same unique key already exists")
        return errors.IntegrityViolation("the write violates a database constraint")
    if code == INSUFFICIENT_PRIVILEGE and "row-level security" in message:
        # The database wall refused a write outside the transaction's clinic (or with none).
        return errors.ClinicContextRequired("a row may only be written in the current clinic")
    if code.startswith(UNAVAILABLE_PREFIXES):
        return errors.DatabaseUnavailable("the database is unavailable")
    return errors.DatabaseError("the database rejected the operation")


def _translate_dbapi(exc: sa_exc.DBAPIError) -> errors.HealthdbError:
    code = sqlstate(exc) or ""
    found = _translate_sql(exc, code, str(exc.orig))
    gone = exc.connection_invalidated or (
        isinstance(exc, sa_exc.InterfaceError | sa_exc.OperationalError) and not code
    )
    if type(found) is errors.DatabaseError and gone:
        return errors.DatabaseUnavailable("the database is unavailable")
    return found


def is_disconnect(exc: BaseException) -> bool:
    """The pooled connection turned out dead (server restart, network cut); it has been
    invalidated, so a re-run gets a fresh one. Without pre-ping this is how a stale
    connection is noticed."""
    if isinstance(exc, DriverDisconnect):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


def retryable(exc: BaseException, *, idempotent: bool) -> bool:
    """Transient failures always; a dead connection only for an idempotent unit (a read):
    a write whose connection died may have committed, and re-running could apply it twice."""
    return is_transient(exc) or (idempotent and is_disconnect(exc))


def log_retry(operation: str, attempt: int, exc: BaseException, *, kind: str = "transient") -> None:
    """Log that ``operation`` runs again as attempt number ``attempt`` (2 for the first
    re-run) after ``exc``: its class and SQLSTATE only, never its message (it can quote
    values). Counted separately in ``healthdb_retries_total{kind}``."""
    log.warning(
        "retry",
        operation=operation,
        attempt=attempt,
        kind=kind,
        error_type=type(exc).__name__,
        sqlstate=sqlstate(exc),
    )


def retrying(*, attempts: int, max_wait: float) -> Callable[[bool], AsyncRetrying]:
    """A factory of tenacity loops for the re-runs *after* a first retryable failure (the
    first attempt runs bare, so the common path builds no retry machinery)."""
    stop = stop_after_attempt(max(attempts - 1, 1))
    wait = wait_exponential_jitter(multiplier=0.01, max=max_wait, jitter=0.05)
    for_writes = retry_if_exception(lambda exc: retryable(exc, idempotent=False))
    for_reads = retry_if_exception(lambda exc: retryable(exc, idempotent=True))

    def make(idempotent: bool) -> AsyncRetrying:
        retry = for_reads if idempotent else for_writes
        return AsyncRetrying(retry=retry, stop=stop, wait=wait, reraise=True)

    return make
