"""Frozen option objects: how a read, write or transaction should run.

Each constructor returns a new value; chain them: ``QueryOptions.for_phi().cached(key)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Self

from healthdb.errors import InvalidInput
from healthdb.query.keys import CacheKey


class ReadStrategy(enum.StrEnum):
    PRIMARY = "primary"
    CACHED = "cached"
    REPLICA = "replica"


class WriteStrategy(enum.StrEnum):
    STANDARD = "standard"
    CRITICAL = "critical"
    BATCH = "batch"


class IsolationLevel(enum.StrEnum):
    READ_COMMITTED = "READ COMMITTED"
    REPEATABLE_READ = "REPEATABLE READ"
    SERIALIZABLE = "SERIALIZABLE"


class LockMode(enum.StrEnum):
    NONE = "none"
    OPTIMISTIC = "optimistic"
    PESSIMISTIC = "pessimistic"


@dataclass(frozen=True, slots=True)
class QueryOptions:
    """Options for ``execute_read`` / ``execute_write``."""

    name: str = "query"
    read_strategy: ReadStrategy = ReadStrategy.PRIMARY
    write_strategy: WriteStrategy = WriteStrategy.STANDARD
    cache_key: CacheKey | None = None
    cache_ttl: float | None = None
    phi: bool = False
    emergency: bool = False
    timeout: float | None = None

    @classmethod
    def for_read(cls, name: str = "read") -> QueryOptions:
        return cls(name=name)

    @classmethod
    def for_write(cls, name: str = "write") -> QueryOptions:
        return cls(name=name)

    @classmethod
    def for_transaction(cls, name: str = "transaction") -> QueryOptions:
        return cls(name=name)

    @classmethod
    def for_phi(cls, name: str = "phi") -> QueryOptions:
        """A read or write that touches protected health information."""
        return cls(name=name, phi=True)

    @classmethod
    def for_emergency(cls, name: str = "emergency") -> QueryOptions:
        return cls(name=name, emergency=True, write_strategy=WriteStrategy.CRITICAL)

    def named(self, name: str) -> Self:
        """Label used in metrics and slow-query records (never include PHI)."""
        if (
            not name
            or len(name) > 64
            or not name.isascii()
            or not name.replace("_", "").replace(".", "").isalnum()
        ):
            raise InvalidInput("operation name must be 1-64 chars of [A-Za-z0-9_.]")
        return replace(self, name=name)

    def cached(self, key: CacheKey, *, ttl: float | None = None) -> Self:
        """Serve from the query cache; ``key`` comes from :mod:`healthdb.query.keys`."""
        if not isinstance(key, CacheKey):
            raise InvalidInput("cached() needs a CacheKey from healthdb.query.keys")
        if self.phi:
            raise InvalidInput("PHI reads are audited one by one and never cached")
        if ttl is not None and ttl <= 0:
            raise InvalidInput("ttl must be positive")
        return replace(self, read_strategy=ReadStrategy.CACHED, cache_key=key, cache_ttl=ttl)

    def on_replica(self) -> Self:
        return replace(self, read_strategy=ReadStrategy.REPLICA)

    def batch(self) -> Self:
        return replace(self, write_strategy=WriteStrategy.BATCH)

    def with_timeout(self, seconds: float) -> Self:
        if seconds <= 0:
            raise InvalidInput("timeout must be positive")
        return replace(self, timeout=seconds)


@dataclass(frozen=True, slots=True)
class TransactionOptions:
    """Options for ``execute_transaction``."""

    name: str = "transaction"
    isolation: IsolationLevel | None = None
    is_read_only: bool = False
    lock: LockMode = LockMode.NONE
    max_retries: int = 3
    timeout: float | None = None

    @classmethod
    def optimistic(cls, *, max_retries: int = 3) -> TransactionOptions:
        """Version-column checks; a conflict re-runs the operation up to ``max_retries``."""
        return cls(lock=LockMode.OPTIMISTIC, max_retries=_retries(max_retries))

    @classmethod
    def pessimistic(cls) -> TransactionOptions:
        """Row locks (``SELECT ... FOR UPDATE``); serialized writers on SQLite."""
        return cls(lock=LockMode.PESSIMISTIC)

    @classmethod
    def read_only(cls) -> TransactionOptions:
        """A read-only transaction (``BEGIN READ ONLY`` on PostgreSQL)."""
        return cls(is_read_only=True)

    @classmethod
    def isolation_level(cls, level: IsolationLevel | str) -> TransactionOptions:
        return cls(isolation=_isolation(level))

    def with_isolation(self, level: IsolationLevel | str) -> Self:
        return replace(self, isolation=_isolation(level))

    def as_read_only(self) -> Self:
        return replace(self, is_read_only=True)

    def with_timeout(self, seconds: float) -> Self:
        if seconds <= 0:
            raise InvalidInput("timeout must be positive")
        return replace(self, timeout=seconds)

    def named(self, name: str) -> Self:
        return replace(self, name=QueryOptions().named(name).name)


def _retries(value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= 20:
        raise InvalidInput("max_retries must be an int in 0..20")
    return value


def _isolation(level: IsolationLevel | str) -> IsolationLevel:
    try:
        return IsolationLevel(str(level).upper().replace("_", " "))
    except ValueError:
        allowed = ", ".join(level.value for level in IsolationLevel)
        raise InvalidInput(f"isolation level must be one of: {allowed}") from None
