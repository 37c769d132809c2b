"""The driver pool (``healthdb.driver_pool``) on a real PostgreSQL: bounded, waits bounded,
and no connection ever goes back into the pool inside a transaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from healthdb.driver_pool import DriverDisconnect, DriverPool
from healthdb.errors import PoolTimeout, ServiceClosed


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
async def pool(pg_migrated_url: str) -> AsyncIterator[DriverPool]:
    dsn = _dsn(pg_migrated_url)

    async def connect() -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(dsn)
        return conn

    made = DriverPool(connect=connect, size=2, timeout=0.2, recycle=1800)
    yield made
    assert made.status().checked_out == 0
    await made.close()


async def backend_pid(pool: DriverPool) -> int:
    async with pool.connection() as conn:
        pid: int = await conn.fetchval("SELECT pg_backend_pid()")
        return pid


async def test_a_connection_is_reused_when_it_comes_back_clean(pool: DriverPool) -> None:
    first = await backend_pid(pool)
    assert await backend_pid(pool) == first
    assert pool.status().idle == 1


async def test_a_transaction_left_open_is_never_handed_on(pool: DriverPool) -> None:
    first = await backend_pid(pool)
    async with pool.connection() as conn:
        await conn.execute("BEGIN; SELECT set_config('app.clinic_id', 'leftover', true)")
    assert pool.status().idle == 0  # terminated, not pooled
    async with pool.connection() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT current_setting('app.clinic_id', true)") in (None, "")
        assert await conn.fetchval("SELECT pg_backend_pid()") != first


async def test_a_sql_error_rolls_back_and_keeps_the_connection(pool: DriverPool) -> None:
    first = await backend_pid(pool)

    async def divide() -> None:
        async with pool.connection() as conn:
            await conn.execute("BEGIN")
            await conn.execute("SELECT 1 / 0")

    with pytest.raises(asyncpg.DivisionByZeroError):
        await divide()
    async with pool.connection() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT pg_backend_pid()") == first


async def test_a_cancelled_user_never_returns_its_connection(pool: DriverPool) -> None:
    started = asyncio.Event()

    async def slow() -> None:
        async with pool.connection() as conn:
            await conn.execute("BEGIN")
            started.set()
            await conn.execute("SELECT pg_sleep(5)")

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.status().checked_out == 0
    assert pool.status().idle == 0
    async with pool.connection() as conn:
        assert not conn.is_in_transaction()


async def test_the_bound_holds_and_the_wait_is_bounded(pool: DriverPool) -> None:
    release = asyncio.Event()
    holding = [asyncio.Event(), asyncio.Event()]

    async def hold(mine: asyncio.Event) -> None:
        async with pool.connection():
            mine.set()
            await release.wait()

    holders = [asyncio.create_task(hold(mine)) for mine in holding]
    for mine in holding:
        await mine.wait()
    with pytest.raises(PoolTimeout):
        async with pool.connection():
            pass
    release.set()
    await asyncio.gather(*holders)
    assert pool.status().checked_out == 0


async def _kill(url: str, pid: int) -> None:
    killer = await asyncpg.connect(_dsn(url))
    try:
        assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await killer.close()


async def test_an_idle_connection_the_server_killed_is_replaced(
    pool: DriverPool, pg_migrated_url: str
) -> None:
    pid = await backend_pid(pool)  # now idle in the pool
    await _kill(pg_migrated_url, pid)
    await asyncio.sleep(0.1)  # let the client see the socket close
    assert await backend_pid(pool) != pid


async def test_a_connection_killed_in_use_is_a_driver_disconnect(
    pool: DriverPool, pg_migrated_url: str
) -> None:
    async def killed_under_its_user() -> None:
        async with pool.connection() as conn:
            await _kill(pg_migrated_url, await conn.fetchval("SELECT pg_backend_pid()"))
            await conn.fetchval("SELECT 1")

    with pytest.raises(DriverDisconnect):
        await killed_under_its_user()
    assert pool.status().idle == 0  # dropped, not pooled


async def test_a_closed_pool_refuses(pool: DriverPool) -> None:
    await pool.close()
    with pytest.raises(ServiceClosed):
        async with pool.connection():
            pass


CLINIC_A = "aaaaaaaa-0000-4000-8000-000000000001"
BEGIN_A = f"BEGIN READ ONLY; SELECT set_config('app.clinic_id', '{CLINIC_A}', true);"


async def test_a_deferred_commit_travels_with_the_next_begin(pool: DriverPool) -> None:
    sent: list[str] = []
    async with pool.transaction(BEGIN_A, defer_commit=True) as conn:
        conn.add_query_logger(lambda record: sent.append(record.query))
        assert await conn.fetchval("SELECT current_setting('app.clinic_id', true)") == CLINIC_A
    assert pool.status().idle == 1
    async with pool.transaction("BEGIN READ ONLY;", defer_commit=True) as again:
        assert again is conn
        # The previous transaction (and its clinic) ended in the same message as BEGIN.
        assert await again.fetchval("SELECT current_setting('app.clinic_id', true)") in (
            None,
            "",
        )
    async with pool.connection() as plain:
        assert not plain.is_in_transaction()
    await asyncio.sleep(0)  # asyncpg hands query log records over with call_soon
    assert "COMMIT; BEGIN READ ONLY;" in sent
    assert "COMMIT" in sent  # before the plain checkout: never inside the last transaction


async def test_an_idle_deferred_commit_is_sent_by_the_pool(
    pool: DriverPool, pg_migrated_url: str
) -> None:
    async with pool.transaction(BEGIN_A, defer_commit=True) as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
    observer = await asyncpg.connect(_dsn(pg_migrated_url))
    try:
        state = "idle in transaction"
        for _ in range(200):  # the pool lingers 50 ms; allow it up to 10 s on a busy machine
            state = await observer.fetchval(
                "SELECT state FROM pg_stat_activity WHERE pid = $1", pid
            )
            if state == "idle":
                break
            await asyncio.sleep(0.05)
    finally:
        await observer.close()
    assert state == "idle"
    assert pool.status().idle == 1
