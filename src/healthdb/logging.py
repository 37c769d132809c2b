"""structlog and stdlib logging configuration. Nothing is configured at import; the CLI and
the app call :func:`configure` once at start-up.

Every line, whether from structlog or a stdlib logger (uvicorn, SQLAlchemy), passes the PHI
redactor (:mod:`healthdb.phi.redaction`) after its traceback is formatted and before it is
rendered, so neither event fields nor exception text can carry PHI or secrets out.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import structlog

from healthdb.phi.redaction import Redactor

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]

#: Loggers that are never allowed below INFO, whatever the configured level: at DEBUG
#: SQLAlchemy logs every result row and aiosqlite every call with its bound parameters, so
#: their debug output is PHI by construction and no key- or pattern-based redaction can
#: recognise it.
QUIET_BELOW_INFO = ("sqlalchemy.engine", "sqlalchemy.pool", "aiosqlite", "asyncpg")
#: SQLAlchemy logs each statement at INFO (parameters hidden). That is one line per
#: statement, nine in ten of all lines at INFO and a tenth of the CPU of a request: they are
#: kept for DEBUG or ``echo_sql``, and otherwise only warnings and errors pass.
SQL_STATEMENTS = "sqlalchemy.engine"


def model_phi_names() -> set[str]:
    """Attribute names declared PHI on any mapped model (``healthdb.phi.phi_fields``).

    Imported lazily: called by the redactor on its first event, after the models exist.
    """
    from healthdb.models.base import Base
    from healthdb.phi.declaration import phi_fields

    names: set[str] = set()
    for mapper in Base.registry.mappers:
        names.update(phi_fields(mapper.class_))
    return names


def redactor() -> Redactor:
    """A redaction processor that knows every model-declared PHI attribute name."""
    return Redactor(model_phi_names)


def configure(
    *,
    level: str = "INFO",
    json: bool = True,
    stream: SupportsWrite[str] | None = None,
    echo_sql: bool = False,
) -> None:
    """Route structlog and stdlib logging (uvicorn, SQLAlchemy) through one redacting
    renderer on ``stream`` (stderr by default): JSON in production, console text in
    development. SQL statements are logged only at DEBUG or with ``echo_sql``."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                # After format_exc_info: the traceback text is redacted like any other value.
                redactor(),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    numeric = logging.getLevelName(level.upper())
    floor = max(numeric, logging.INFO)
    for name in QUIET_BELOW_INFO:
        logging.getLogger(name).setLevel(floor)
    if not (echo_sql or numeric <= logging.DEBUG):
        logging.getLogger(SQL_STATEMENTS).setLevel(max(floor, logging.WARNING))
    structlog.configure(
        processors=[*SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
