"""The login throttle shared through real Redis: the unit suite's behaviour tests against
the Redis store, limits shared between instances, and the fallback when Redis is down."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from healthdb_api.auth.throttle import (
    LoginThrottle,
    MemoryLoginThrottle,
    TooManyAttempts,
    account_key,
)
from healthdb_api.auth.throttle_redis import RedisLoginThrottle
from tests.conftest import REDIS_URL

# The behaviour contract, run here against Redis (the fixtures below replace the unit ones).
from tests.unit.test_throttle import (
    ADDR,
    EMAIL,
    Clock,
    test_abort_takes_the_attempt_back,
    test_accounts_are_keyed_by_normalised_email_hash,
    test_concurrent_attempts_are_counted_before_they_finish,
    test_locks_after_the_limit_until_the_window_passes,
    test_no_address_means_account_limit_only,
    test_refused_attempts_do_not_extend_the_lock,
    test_success_resets_the_account_and_takes_back_its_own_count,
    test_the_address_limit_spans_accounts,
    test_the_window_slides,
)

__all__ = [
    "test_abort_takes_the_attempt_back",
    "test_accounts_are_keyed_by_normalised_email_hash",
    "test_concurrent_attempts_are_counted_before_they_finish",
    "test_locks_after_the_limit_until_the_window_passes",
    "test_no_address_means_account_limit_only",
    "test_refused_attempts_do_not_extend_the_lock",
    "test_success_resets_the_account_and_takes_back_its_own_count",
    "test_the_address_limit_spans_accounts",
    "test_the_window_slides",
]

pytestmark = pytest.mark.redis


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def prefix() -> str:
    return f"test:login:{uuid.uuid4().hex}:"


def shared(url: str, prefix: str, clock: Clock | None = None) -> RedisLoginThrottle:
    """One service instance's throttle (its own client and fallback) on ``prefix``."""
    fallback = MemoryLoginThrottle(max_per_account=5, max_per_address=20, window=900)
    return RedisLoginThrottle(
        Redis.from_url(url), fallback=fallback, timeout=2, prefix=prefix, clock=clock
    )


@pytest.fixture
async def throttle(clock: Clock, prefix: str) -> AsyncIterator[LoginThrottle]:
    store = shared(REDIS_URL, prefix, clock)
    try:
        yield store
    finally:
        await store.close()


async def test_instances_share_one_window(prefix: str) -> None:
    """Three failures on one instance and two on another lock the account on both; a
    success on either clears it for both. Redis counts, not the instances' memories."""
    a, b = shared(REDIS_URL, prefix), shared(REDIS_URL, prefix)
    try:
        for _ in range(3):
            await a.begin(EMAIL, ADDR)
        for _ in range(2):
            await b.begin(EMAIL, "198.51.100.9")
        for instance in (a, b):
            with pytest.raises(TooManyAttempts):
                await instance.begin(EMAIL, "192.0.2.1")
        assert await a.failures(account_key(EMAIL)) == 5
        assert len(a.fallback) == len(b.fallback) == 0
        assert (a.backend, b.backend) == ("redis", "redis")
    finally:
        await a.close()
        await b.close()


async def test_redis_down_falls_back_to_process_memory(prefix: str) -> None:
    """Nothing listens on port 1: attempts are counted in memory and still locked out."""
    down = shared("redis://127.0.0.1:1/0", prefix)
    try:
        for _ in range(5):
            attempt = await down.begin(EMAIL, ADDR)
            assert attempt.token == ""
        with pytest.raises(TooManyAttempts):
            await down.begin(EMAIL, ADDR)
        assert down.backend == "local"
        await down.abort(attempt)  # goes to the store that counted it
        assert await down.fallback.failures(account_key(EMAIL)) == 4
        # Asking for a count does not fail either: the store that counts answers.
        assert await down.failures(account_key(EMAIL)) == 4
    finally:
        await down.close()
