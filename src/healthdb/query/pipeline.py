"""The middleware chain every facade call passes through.

A middleware wraps the next handler and returns a handler (starlette-style: ``step(next)``);
:func:`chain` folds a list of them around the endpoint that actually runs the unit of work.
A step that only checks or routes can be a plain function returning ``next_(call)`` (the
coroutine, not awaited): it then adds no frame to the await chain that every round trip
resumes.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from healthdb.command import Command
from healthdb.context import ClinicScope
from healthdb.query.options import QueryOptions, TransactionOptions
from healthdb.view import Read

T = TypeVar("T")
Operation = Callable[[AsyncSession], Awaitable[T]]


class CallKind(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    TRANSACTION = "transaction"
    CRITICAL = "critical"


@dataclass(slots=True)
class Call:
    """One facade call on its way through the chain."""

    kind: CallKind
    operation: Operation[Any] | Read[Any] | Command[Any]
    options: QueryOptions | TransactionOptions
    scope: ClinicScope | None
    reason: str | None = None
    cache_hit: bool = False

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def strategy(self) -> str:
        if isinstance(self.options, TransactionOptions):
            return "read_only" if self.options.is_read_only else self.options.lock.value
        if self.kind is CallKind.READ:
            return self.options.read_strategy.value
        if self.kind is CallKind.CRITICAL:
            return "critical"
        return self.options.write_strategy.value


Handler = Callable[[Call], Awaitable[Any]]
Middleware = Callable[[Handler], Handler]


def chain(middleware: Sequence[Middleware], endpoint: Handler) -> Handler:
    """Compose ``middleware`` (outermost first) around ``endpoint``."""
    handler = endpoint
    for step in reversed(middleware):
        handler = step(handler)
    return handler
