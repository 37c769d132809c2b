"""Cross-process cache invalidation through real Redis, and degradation without it."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from healthdb import DatabaseService, QueryOptions, Settings, keys
from healthdb.clinics import create_clinic
from healthdb.models import Patient
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.redis


def _settings(url: str, redis_url: str | None) -> Settings:
    return Settings(
        database_url=SecretStr(url),
        redis_url=SecretStr(redis_url) if redis_url else None,
        pool_size=2,
        max_overflow=0,
    )


async def _seed(db: DatabaseService) -> tuple[uuid.UUID, uuid.UUID]:
    cid = await create_clinic(db, "bus")

    async def patient(s: AsyncSession) -> uuid.UUID:
        p = Patient(
            mrn=uuid.uuid4().hex[:8],
            given_name="Ada",
            family_name="Before",
            date_of_birth=dt.date(1970, 1, 1),
            sex="female",
        )
        s.add(p)
        await s.flush()
        return p.id

    async with db.clinic(cid):
        pid = await db.execute_write(patient)
    return cid, pid


async def _family_name(db: DatabaseService, cid: uuid.UUID, pid: uuid.UUID) -> str:
    """Which name the patient has, judged by its version: PHI itself is never cached."""

    async def read(s: AsyncSession) -> str:
        version = (await s.execute(select(Patient.version).where(Patient.id == pid))).scalar()
        return {1: "Before", 2: "After"}[version]

    options = QueryOptions.for_read().cached(keys.for_patient(cid, pid), ttl=300)
    async with db.clinic(cid):
        return await db.execute_read(read, options)


async def _rename(db: DatabaseService, cid: uuid.UUID, pid: uuid.UUID, name: str) -> None:
    async def write(s: AsyncSession) -> None:
        p = await s.get(Patient, pid)
        assert p is not None
        p.family_name = name

    async with db.clinic(cid):
        await db.execute_write(write)


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(250):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met within 5 s")


async def test_a_write_in_one_process_evicts_the_other_processes_cache(
    pg_migrated_url: str,
) -> None:
    async with (
        DatabaseService.connect(_settings(pg_migrated_url, REDIS_URL)) as a,
        DatabaseService.connect(_settings(pg_migrated_url, REDIS_URL)) as b,
    ):
        assert a.bus is not None
        assert b.bus is not None
        await asyncio.wait_for(b.bus.connected.wait(), 5)
        cid, pid = await _seed(a)
        # The seed's own invalidations reach b asynchronously; one landing after b's first
        # read would evict the entry this test wants cached, so let them all arrive first.
        sent, got = a.bus, b.bus
        await _until(lambda: got.applied >= sent.published)
        assert await _family_name(b, cid, pid) == "Before"
        assert await _family_name(b, cid, pid) == "Before"  # now served from b's cache
        assert b.cache.store.hits >= 1

        await _rename(a, cid, pid, "After")

        # Eviction arrives asynchronously over pub/sub: poll, bounded.
        for _ in range(250):
            if await _family_name(b, cid, pid) == "After":
                break
            await asyncio.sleep(0.02)
        assert await _family_name(b, cid, pid) == "After"


async def test_without_the_bus_the_other_process_serves_its_cached_copy(
    pg_migrated_url: str,
) -> None:
    """The control for the test above: it shows the bus is what evicts the entry."""
    async with (
        DatabaseService.connect(_settings(pg_migrated_url, None)) as a,
        DatabaseService.connect(_settings(pg_migrated_url, None)) as b,
    ):
        cid, pid = await _seed(a)
        assert await _family_name(b, cid, pid) == "Before"
        await _rename(a, cid, pid, "After")
        await asyncio.sleep(0.2)
        assert await _family_name(b, cid, pid) == "Before"


async def test_redis_down_degrades_to_local_invalidation(sqlite_migrated_url: str) -> None:
    dead_redis = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    async with DatabaseService.connect(_settings(sqlite_migrated_url, dead_redis)) as db:
        assert db.bus is not None
        cid, pid = await _seed(db)
        assert await _family_name(db, cid, pid) == "Before"
        await _rename(db, cid, pid, "After")  # the write is acknowledged despite Redis
        assert await _family_name(db, cid, pid) == "After"  # local invalidation still works
        assert db.bus.publish_failures >= 1
        assert not db.bus.connected.is_set()
