"""The login throttle: sliding windows per account and per address, on a fake clock.

The behaviour tests take the ``throttle`` fixture; tests/integration/test_login_throttle_redis.py
runs the same ones against the Redis throttle.
"""

from __future__ import annotations

import pytest

from healthdb_api.auth.throttle import (
    LoginThrottle,
    MemoryLoginThrottle,
    TooManyAttempts,
    account_key,
    address_key,
)

EMAIL = "ada@clinic.example"
ADDR = "203.0.113.7"


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def throttle(clock: Clock) -> LoginThrottle:
    return MemoryLoginThrottle(max_per_account=5, max_per_address=20, window=900, clock=clock)


async def fail(
    throttle: LoginThrottle, n: int, email: str = EMAIL, addr: str | None = ADDR
) -> None:
    for _ in range(n):
        await throttle.begin(email, addr)  # counted at the start; a failure just leaves it there


async def test_locks_after_the_limit_until_the_window_passes(
    throttle: LoginThrottle, clock: Clock
) -> None:
    await fail(throttle, 5)
    with pytest.raises(TooManyAttempts) as raised:
        await throttle.begin(EMAIL, ADDR)
    assert raised.value.retry_after == 900
    clock.now += 600
    with pytest.raises(TooManyAttempts) as raised:
        await throttle.begin(EMAIL, ADDR)
    assert raised.value.retry_after == 300
    clock.now += 300
    await throttle.begin(EMAIL, ADDR)


async def test_the_window_slides(throttle: LoginThrottle, clock: Clock) -> None:
    await fail(throttle, 3)
    clock.now += 500
    await fail(throttle, 2)
    with pytest.raises(TooManyAttempts) as raised:
        await throttle.begin(EMAIL, ADDR)
    assert raised.value.retry_after == 400  # when the first three leave the window
    clock.now += 400
    await throttle.begin(EMAIL, ADDR)  # three old failures expired; this is the 3rd in window
    with pytest.raises(TooManyAttempts):
        await fail(throttle, 3)


async def test_refused_attempts_do_not_extend_the_lock(
    throttle: LoginThrottle, clock: Clock
) -> None:
    await fail(throttle, 5)
    for _ in range(50):
        clock.now += 10
        with pytest.raises(TooManyAttempts):
            await throttle.begin(EMAIL, ADDR)
    clock.now += 400
    await throttle.begin(EMAIL, ADDR)


async def test_success_resets_the_account_and_takes_back_its_own_count(
    throttle: LoginThrottle,
) -> None:
    await fail(throttle, 4)
    attempt = await throttle.begin(EMAIL, ADDR)
    await throttle.succeeded(attempt)
    assert await throttle.failures(account_key(EMAIL)) == 0
    assert await throttle.failures(address_key(ADDR) or "") == 4  # the address keeps its failures
    await fail(throttle, 5)
    with pytest.raises(TooManyAttempts):
        await throttle.begin(EMAIL, ADDR)


async def test_abort_takes_the_attempt_back(throttle: LoginThrottle) -> None:
    await fail(throttle, 4)
    await throttle.abort(await throttle.begin(EMAIL, ADDR))
    assert await throttle.failures(account_key(EMAIL)) == 4
    await throttle.begin(EMAIL, ADDR)


async def test_accounts_are_keyed_by_normalised_email_hash(throttle: LoginThrottle) -> None:
    await fail(throttle, 5, email=" ADA@Clinic.Example ")
    with pytest.raises(TooManyAttempts):
        await throttle.begin(EMAIL, "198.51.100.1")
    assert EMAIL not in account_key(EMAIL)
    await throttle.begin("grace@clinic.example", "198.51.100.1")  # other accounts unaffected


async def test_the_address_limit_spans_accounts(throttle: LoginThrottle, clock: Clock) -> None:
    for i in range(20):
        await throttle.begin(f"user{i}@clinic.example", ADDR)
    with pytest.raises(TooManyAttempts):
        await throttle.begin("fresh@clinic.example", ADDR)
    await throttle.begin("fresh@clinic.example", "198.51.100.1")
    clock.now += 900
    await throttle.begin("fresh@clinic.example", ADDR)


async def test_no_address_means_account_limit_only(throttle: LoginThrottle) -> None:
    for i in range(40):
        await throttle.begin(f"user{i}@clinic.example", None)
    await fail(throttle, 5, addr=None)
    with pytest.raises(TooManyAttempts):
        await throttle.begin(EMAIL, None)


async def test_concurrent_attempts_are_counted_before_they_finish(throttle: LoginThrottle) -> None:
    # Five attempts in flight (none finished) already exhaust the account's budget.
    in_flight = [await throttle.begin(EMAIL, ADDR) for _ in range(5)]
    with pytest.raises(TooManyAttempts):
        await throttle.begin(EMAIL, ADDR)
    await throttle.succeeded(in_flight[0])
    await throttle.begin(EMAIL, ADDR)


async def test_memory_is_bounded(clock: Clock) -> None:
    small = MemoryLoginThrottle(
        max_per_account=5, max_per_address=10**6, window=60, clock=clock, max_keys=100
    )
    for i in range(1000):
        await small.begin(f"user{i}@clinic.example", None)
    assert len(small) <= 100
    clock.now += 61
    await small.begin("late@clinic.example", None)
    assert len(small) == 1


@pytest.mark.parametrize(
    "kwargs", [{"max_per_account": 0}, {"max_per_address": 0}, {"window": 0}, {"max_keys": 0}]
)
def test_invalid_configuration_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MemoryLoginThrottle(**kwargs)  # type: ignore[arg-type]
