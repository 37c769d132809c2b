"""Error translation for fabricated SQLAlchemy/driver errors, and what counts as transient."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm.exc import StaleDataError
from structlog.testing import capture_logs

from healthdb import errors
from healthdb.internal.metrics import QueryMetrics
from healthdb.internal.retry import is_transient, retrying, sqlstate, translate
from healthdb.query.middleware import retried
from healthdb.query.options import QueryOptions
from healthdb.query.pipeline import Call, CallKind

T = TypeVar("T")
SECRET = "Jane-Doe-123-45-6789"


class DriverError(Exception):
    def __init__(self, message: str = "driver failure", sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class PsycopgStyle(Exception):
    def __init__(self, pgcode: str) -> None:
        super().__init__("x")
        self.pgcode = pgcode


def wrap(cls: type[sa_exc.DBAPIError], code: str | None = None, message: str = "boom"):  # type: ignore[no-untyped-def]
    return cls("SELECT * FROM patients WHERE ssn = $1", (SECRET,), DriverError(message, code))


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (sa_exc.TimeoutError("QueuePool limit reached"), errors.PoolTimeout),
        (StaleDataError("expected 1 row, got 0"), errors.ConflictError),
        (TimeoutError(), errors.QueryTimeout),
        (ConnectionRefusedError(), errors.DatabaseUnavailable),
        (wrap(sa_exc.IntegrityError, "23505"), errors.ConflictError),
        (
            wrap(sa_exc.IntegrityError, None, "UNIQUE constraint failed: patients.mrn"),
            errors.ConflictError,
        ),
        (wrap(sa_exc.IntegrityError, "23503"), errors.IntegrityViolation),
        (wrap(sa_exc.IntegrityError, "23502"), errors.IntegrityViolation),
        (wrap(sa_exc.OperationalError, "40001"), errors.TransientError),
        (wrap(sa_exc.OperationalError, "40P01"), errors.TransientError),
        (wrap(sa_exc.OperationalError, None, "database is locked"), errors.TransientError),
        (wrap(sa_exc.DBAPIError, "57014"), errors.QueryTimeout),
        (wrap(sa_exc.OperationalError, "55P03"), errors.QueryTimeout),
        (wrap(sa_exc.OperationalError, "08006"), errors.DatabaseUnavailable),
        (wrap(sa_exc.OperationalError, "57P01"), errors.DatabaseUnavailable),
        (wrap(sa_exc.OperationalError, "53300"), errors.DatabaseUnavailable),
        (wrap(sa_exc.InterfaceError, None), errors.DatabaseUnavailable),
        (wrap(sa_exc.ProgrammingError, "42601"), errors.DatabaseError),
        (wrap(sa_exc.DataError, "22001"), errors.DatabaseError),
        (ValueError("not a database error"), errors.DatabaseError),
    ],
)
def test_translate_maps_to_the_library_hierarchy(
    exc: BaseException, expected: type[errors.HealthdbError]
) -> None:
    translated = translate(exc)
    assert type(translated) is expected
    # No statement, parameter or driver text leaks into the message.
    assert SECRET not in str(translated)
    assert "patients" not in str(translated)


def test_specific_subtypes_are_not_swallowed_by_parents() -> None:
    # PoolTimeout/QueryTimeout/TransientError are DatabaseUnavailable: check the exact codes.
    assert translate(sa_exc.TimeoutError()).code == "pool_timeout"
    assert translate(wrap(sa_exc.DBAPIError, "57014")).code == "query_timeout"
    assert translate(wrap(sa_exc.OperationalError, "40001")).code == "transient_error"
    assert translate(wrap(sa_exc.IntegrityError, "23505")).code == "conflict"


def test_healthdb_errors_pass_through_unchanged() -> None:
    original = errors.NotFound("gone")
    assert translate(original) is original


def test_connection_invalidated_is_unavailable() -> None:
    exc = sa_exc.DBAPIError("SELECT 1", None, DriverError("x"), connection_invalidated=True)
    assert type(translate(exc)) is errors.DatabaseUnavailable


def test_sqlstate_reads_sqlstate_pgcode_and_the_cause() -> None:
    assert sqlstate(wrap(sa_exc.OperationalError, "40001")) == "40001"
    assert sqlstate(sa_exc.OperationalError("s", None, PsycopgStyle("40P01"))) == "40P01"
    inner = DriverError("x", "57014")
    outer = DriverError("adapter", None)
    outer.__cause__ = inner
    assert sqlstate(sa_exc.DBAPIError("s", None, outer)) == "57014"
    assert sqlstate(ValueError()) is None


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (wrap(sa_exc.OperationalError, "40001"), True),
        (wrap(sa_exc.OperationalError, "40P01"), True),
        (wrap(sa_exc.OperationalError, None, "database is locked"), True),
        (wrap(sa_exc.OperationalError, None, "deadlock detected"), True),
        (wrap(sa_exc.IntegrityError, "23505"), False),
        (wrap(sa_exc.DBAPIError, "57014"), False),
        (wrap(sa_exc.OperationalError, "08006"), False),
        (sa_exc.TimeoutError(), False),
        (StaleDataError(), False),
        (RuntimeError("database is locked"), False),
        (errors.TransientError("x"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


async def run_step(
    fn: Callable[[], Awaitable[T]], *, attempts: int, kind: CallKind = CallKind.WRITE
) -> T:
    """Drive the chain's retry step exactly as the facade does."""
    step = retried(retrying(attempts=attempts, max_wait=0.001), QueryMetrics())

    async def operation(_: object) -> None:
        raise AssertionError("the endpoint below is faked")

    call = Call(kind=kind, operation=operation, options=QueryOptions(), scope=None)

    async def endpoint(_: Call) -> T:
        return await fn()

    result: T = await step(endpoint)(call)
    return result


async def test_transient_errors_are_rerun_and_others_raised_at_once() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise wrap(sa_exc.OperationalError, "40001")
        return "ok"

    with capture_logs() as logs:
        assert await run_step(flaky, attempts=4) == "ok"
    assert calls == 3
    # Each re-run is logged: operation, attempt, error class and SQLSTATE, no message.
    retries = [e for e in logs if e["event"] == "retry"]
    assert [(e["operation"], e["attempt"]) for e in retries] == [("query", 2), ("query", 3)]
    assert {(e["error_type"], e["sqlstate"], e["kind"]) for e in retries} == {
        ("OperationalError", "40001", "transient")
    }
    assert all(
        set(e) == {"event", "log_level", "operation", "attempt", "kind", "error_type", "sqlstate"}
        for e in retries
    )

    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise wrap(sa_exc.IntegrityError, "23505")

    with pytest.raises(errors.ConflictError):
        await run_step(broken, attempts=4)
    assert calls == 1

    calls = 0

    async def always() -> None:
        nonlocal calls
        calls += 1
        raise wrap(sa_exc.OperationalError, "40P01")

    with pytest.raises(errors.TransientError):
        await run_step(always, attempts=4)
    assert calls == 4


async def test_a_dead_connection_is_rerun_for_reads_but_never_for_writes() -> None:
    calls = 0

    async def dead() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            exc = wrap(sa_exc.OperationalError, "08006")
            exc.connection_invalidated = True
            raise exc
        return "ok"

    assert await run_step(dead, attempts=3, kind=CallKind.READ) == "ok"
    assert calls == 2

    calls = 0
    with pytest.raises(errors.DatabaseUnavailable):
        await run_step(dead, attempts=3, kind=CallKind.WRITE)
    assert calls == 1
