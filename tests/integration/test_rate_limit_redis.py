"""GCRA in real Redis: atomic across processes, bounded, and degrading to local limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import pytest
from pydantic import SecretStr
from redis.asyncio import BlockingConnectionPool, Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from structlog.testing import capture_logs

from healthdb import RateLimited
from healthdb.internal.rate_limit import ClinicRateLimiter, LocalGcra, RedisGcra
from healthdb.models import Clinic
from tests.conftest import REDIS_URL
from tests.integration.conftest import MakeClinic, MakeDb

#: The test database number of REDIS_URL: the proxy below must reach the same one.
REDIS_DB = urlparse(REDIS_URL).path.lstrip("/") or "0"

pytestmark = pytest.mark.redis


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    pool = BlockingConnectionPool.from_url(REDIS_URL, max_connections=50, timeout=5)
    client = Redis.from_pool(pool)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"test:rl:{uuid.uuid4().hex}:"


async def test_a_burst_admits_exactly_the_burst_and_retry_after_is_exact(
    redis: Redis, prefix: str
) -> None:
    clock = FakeClock()
    gcra = RedisGcra(redis, timeout=2, prefix=prefix, clock=clock)
    rate = 600 / 60
    decisions = [await gcra.acquire("c", rate_per_second=rate, burst=5) for _ in range(50)]
    assert sum(d.allowed for d in decisions) == 5
    assert decisions[5].retry_after == pytest.approx(0.1)
    clock.now += 0.1
    assert (await gcra.acquire("c", rate_per_second=rate, burst=5)).allowed
    assert not (await gcra.acquire("c", rate_per_second=rate, burst=5)).allowed
    ttl = await redis.pttl(prefix + "c")
    assert 0 < ttl <= 2_000  # the key expires once its bucket would be full again


async def test_concurrent_callers_on_the_server_clock_never_over_admit(
    redis: Redis, prefix: str
) -> None:
    gcra = RedisGcra(redis, timeout=2, prefix=prefix)
    per_minute, burst = 60, 10
    started = time.monotonic()
    decisions = await asyncio.gather(
        *(gcra.acquire("c", rate_per_second=per_minute / 60, burst=burst) for _ in range(300))
    )
    elapsed = time.monotonic() - started
    admitted = sum(d.allowed for d in decisions)
    assert burst <= admitted <= burst + per_minute / 60 * elapsed + 1
    assert all(d.retry_after > 0 for d in decisions if not d.allowed)


WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from redis.asyncio import BlockingConnectionPool, Redis
    from healthdb.internal.rate_limit import RedisGcra

    url, key, prefix, per_minute, burst, count, start_at = sys.argv[1:]
    per_minute, burst, count, start_at = int(per_minute), int(burst), int(count), float(start_at)

    async def main():
        pool = BlockingConnectionPool.from_url(url, max_connections=50, timeout=5)
        client = Redis.from_pool(pool)
        gcra = RedisGcra(client, timeout=5, prefix=prefix)
        await client.ping()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        decisions = await asyncio.gather(*(
            gcra.acquire(key, rate_per_second=per_minute / 60, burst=burst)
            for _ in range(count)
        ))
        await client.aclose()
        print(json.dumps({"admitted": sum(d.allowed for d in decisions), "at": time.time()}))

    asyncio.run(main())
    """
)


def test_two_processes_bursting_ten_times_the_limit_never_over_admit(prefix: str) -> None:
    per_minute, burst = 50, 10
    start_at = time.time() + 1.5  # both processes fire in the same window
    args = [REDIS_URL, "clinic", prefix, str(per_minute), str(burst), str(5 * per_minute)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *args, str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err[-2000:]
        results.append(json.loads(out))
    admitted = sum(r["admitted"] for r in results)
    window = max(r["at"] for r in results) - start_at
    assert window < 60
    assert burst <= admitted <= per_minute + burst  # zero over-admission
    assert admitted <= burst + per_minute / 60 * window + 1  # and the bound is tight


# -- degradation ---------------------------------------------------------------------------


class Proxy:
    """A TCP proxy to the real Redis that can be taken down and brought back on its port."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers.difference_update((writer, up_writer))


async def test_dead_redis_falls_back_to_local_limits_and_keeps_answering(prefix: str) -> None:
    dead = Redis.from_url("redis://127.0.0.1:1", socket_timeout=0.25, socket_connect_timeout=0.25)
    switches: list[str] = []
    limiter = ClinicRateLimiter(
        per_minute=60,
        burst=3,
        store=RedisGcra(dead, timeout=0.25, prefix=prefix),
        local=LocalGcra(),
        on_switch=switches.append,
    )
    clinic = uuid.uuid4()
    started = time.monotonic()
    for _ in range(3):
        await limiter.check(clinic)
    with pytest.raises(RateLimited):
        await limiter.check(clinic)
    assert time.monotonic() - started < 2  # bounded, and Redis is not retried on every call
    assert limiter.backend == "local"
    assert switches == ["local"]
    await limiter.close()


async def test_switches_back_to_redis_when_it_returns(prefix: str, redis: Redis) -> None:
    proxy = Proxy()
    await proxy.start()
    # The suite's Redis database (HEALTHDB_TEST_REDIS_URL), reached through the proxy.
    client = Redis.from_url(
        f"redis://127.0.0.1:{proxy.port}/{REDIS_DB}",
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
    )
    switches: list[str] = []
    limiter = ClinicRateLimiter(
        per_minute=60,
        burst=100,
        store=RedisGcra(client, timeout=0.5, prefix=prefix),
        local=LocalGcra(),
        probe_interval=0.2,
        on_switch=switches.append,
    )
    clinic = uuid.uuid4()
    try:
        assert (await limiter.acquire(clinic))[1] == "redis"
        await proxy.stop()
        with capture_logs() as logs:
            backends = [(await limiter.acquire(clinic))[1] for _ in range(5)]
        assert backends == ["local"] * 5
        assert [e["event"] for e in logs].count("rate_limit_fallback") == 1
        assert all("clinic_id" not in e or e["event"] == "rate_limited" for e in logs)

        await proxy.start()  # Redis is back on the same address
        await asyncio.sleep(0.25)  # the probe interval
        decision, backend = await limiter.acquire(clinic)
        assert (decision.allowed, backend) == (True, "redis")
        assert switches == ["local", "redis"]
        # The charges made through Redis are in Redis (two so far: before and after).
        assert await redis.exists(f"{prefix}{clinic}")
    finally:
        await limiter.close()
        with contextlib.suppress(AssertionError):
            await proxy.stop()


# -- through the facade -------------------------------------------------------------------


async def test_facade_budget_override_and_exempt_emergency_lane(
    make_db: MakeDb, make_clinic: MakeClinic
) -> None:
    db = await make_db(redis_url=SecretStr(REDIS_URL), rate_limit_per_minute=6, rate_limit_burst=2)
    assert db.rate_limiter.backend == "redis"
    clinic, other, custom = await make_clinic(), await make_clinic(), await make_clinic()

    async def set_override(session: AsyncSession) -> None:
        stmt = update(Clinic).where(Clinic.id == custom).values(rate_limit_per_minute=1)
        await session.execute(stmt)

    async with db.clinic(custom):  # a clinic's row is written only in its own scope
        await db.execute_write(set_override)

    await db.check_rate_limit(clinic)
    await db.check_rate_limit(str(clinic))
    with pytest.raises(RateLimited) as raised:
        await db.check_rate_limit(clinic)
    assert 9 < raised.value.retry_after <= 10  # 6/min: one every 10 s
    await db.check_rate_limit(other)  # budgets are per clinic

    await db.check_rate_limit(custom)
    await db.check_rate_limit(custom)
    with pytest.raises(RateLimited) as raised:
        await db.check_rate_limit(custom)
    assert 59 < raised.value.retry_after <= 60  # the clinic's override: 1/min

    async def chart(session: AsyncSession) -> int:
        return 1

    with capture_logs() as logs:
        async with db.clinic(clinic, role="doctor"):
            assert await db.execute_critical(chart, reason="cardiac arrest") == 1
    [exempt] = [e for e in logs if e["event"] == "rate_limit_exempt"]
    assert exempt["clinic_id"] == str(clinic)
    assert exempt["over_budget"] is True
    assert db.metrics.rate_limited.labels("redis")._value.get() == 2
    assert db.metrics.rate_limit_exempt.labels("true")._value.get() == 1
