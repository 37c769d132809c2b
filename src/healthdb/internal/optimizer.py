"""Slow-statement capture: duration, operation, and (PostgreSQL, opt-in) the plan.

Records hold statement text only. Parameters are never stored, and literals that the
planner prints into a plan are masked, so PHI cannot reach a slow-query record.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from healthdb.execution_options import TRUSTED

current_operation: ContextVar[str] = ContextVar("healthdb_operation", default="-")

_START = "healthdb_stmt_start"
_LITERAL = re.compile(r"'(?:[^']|'')*'")
_MAX_SQL = 2000


@dataclass(frozen=True, slots=True)
class SlowStatement:
    operation: str
    statement: str
    duration_ms: float
    plan: str | None


def mask_literals(text: str) -> str:
    """Replace every quoted literal with ``'?'``."""
    return _LITERAL.sub("'?'", text)


class SlowQueryLog:
    """Keeps the most recent statements slower than ``threshold_ms``."""

    def __init__(
        self,
        *,
        threshold_ms: float,
        size: int = 100,
        explain: bool = False,
        on_slow: Callable[[SlowStatement], None] | None = None,
    ) -> None:
        self.threshold_ms = threshold_ms
        self.explain = explain
        self.records: deque[SlowStatement] = deque(maxlen=size)
        self._on_slow = on_slow

    def attach(self, engine: AsyncEngine) -> None:
        target = engine.sync_engine
        event.listen(target, "before_cursor_execute", self._before)
        event.listen(target, "after_cursor_execute", self._after)

    def _before(self, conn: Connection, *_: Any) -> None:
        conn.info.setdefault(_START, []).append(time.perf_counter())

    def _after(
        self, conn: Connection, _cursor: Any, statement: str, parameters: Any, *_: Any
    ) -> None:
        starts = conn.info.get(_START)
        if not starts:
            return
        elapsed_ms = (time.perf_counter() - starts.pop()) * 1000
        if elapsed_ms < self.threshold_ms:
            return
        plan = self._plan(conn, statement, parameters)
        record = SlowStatement(
            current_operation.get(), mask_literals(statement)[:_MAX_SQL], elapsed_ms, plan
        )
        self.records.append(record)
        if self._on_slow:
            self._on_slow(record)

    def _plan(self, conn: Connection, statement: str, parameters: Any) -> str | None:
        if not (self.explain and conn.dialect.name == "postgresql"):
            return None
        if (
            not statement.lstrip()
            .upper()
            .startswith(("SELECT", "UPDATE", "DELETE", "INSERT", "WITH"))
        ):
            return None
        if conn.info.get("healthdb_explaining"):
            return None
        conn.info["healthdb_explaining"] = True
        # A savepoint keeps a failed EXPLAIN from aborting the caller's transaction.
        conn.exec_driver_sql("SAVEPOINT healthdb_explain")
        try:
            # TRUSTED: the statement explained has just run, past both walls.
            explain = "EXPLAIN " + statement
            rows = conn.exec_driver_sql(explain, parameters, TRUSTED).fetchall()
            conn.exec_driver_sql("RELEASE SAVEPOINT healthdb_explain")
            return mask_literals("\n".join(str(row[0]) for row in rows))[: _MAX_SQL * 4]
        except Exception:  # a plan is best-effort diagnostics; never fail the caller for it
            conn.exec_driver_sql("ROLLBACK TO SAVEPOINT healthdb_explain")
            return None
        finally:
            conn.info["healthdb_explaining"] = False
