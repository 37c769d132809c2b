"""Pool occupancy and database reachability, as plain values for health endpoints."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """Occupancy of one connection pool."""

    size: int
    checked_out: int
    overflow: int


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Outcome of :meth:`DatabaseService.health`; ``error`` is an error code, never a message."""

    ok: bool
    dialect: str
    latency_ms: float | None
    pools: dict[str, PoolStatus]
    error: str | None = None


def pool_status(engine: AsyncEngine) -> PoolStatus:
    pool = engine.pool
    return PoolStatus(
        size=pool.size(),  # type: ignore[attr-defined]
        checked_out=pool.checkedout(),  # type: ignore[attr-defined]
        overflow=pool.overflow(),  # type: ignore[attr-defined]
    )


async def ping(engine: AsyncEngine) -> float:
    """One round trip; milliseconds. Driver errors propagate for the caller to translate."""
    started = time.perf_counter()
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return (time.perf_counter() - started) * 1000
