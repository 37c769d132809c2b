"""The middleware chain every facade call passes through.

A middleware is a plain async callable ``(call, next) -> result``; :func:`chain` folds a list
of them around the endpoint that actually runs the unit of work (starlette-style).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from healthdb.context import ClinicScope
from healthdb.query.options import QueryOptions, TransactionOptions

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
    operation: Operation[Any]
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
Middleware = Callable[[Call, Handler], Awaitable[Any]]


def chain(middleware: Sequence[Middleware], endpoint: Handler) -> Handler:
    """Compose ``middleware`` (outermost first) around ``endpoint``."""
    handler = endpoint
    for step in reversed(middleware):
        handler = _link(step, handler)
    return handler


def _link(step: Middleware, next_: Handler) -> Handler:
    async def handler(call: Call) -> Any:
        return await step(call, next_)

    return handler
