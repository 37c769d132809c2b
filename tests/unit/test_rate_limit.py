"""GCRA in process memory with a fake clock, and the limiter's budget and fallback logic."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from healthdb import RateLimited
from healthdb.internal.rate_limit import ClinicRateLimiter, Decision, LocalGcra, gcra_params


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _fire(gcra: LocalGcra, n: int, *, rate: float, burst: int, key: str = "k") -> int:
    admitted = 0
    for _ in range(n):
        admitted += (await gcra.acquire(key, rate_per_second=rate, burst=burst)).allowed
    return admitted


async def test_a_burst_at_one_instant_admits_exactly_the_burst() -> None:
    clock = FakeClock()
    gcra = LocalGcra(clock=clock)
    # 60/min = 1/s, burst 10: ten at once, and the eleventh waits one emission interval.
    assert await _fire(gcra, 100, rate=1.0, burst=10) == 10


async def test_refill_rate_and_retry_after() -> None:
    clock = FakeClock()
    gcra = LocalGcra(clock=clock)
    rate = 600 / 60  # 10/s: one request every 100 ms
    assert await _fire(gcra, 5, rate=rate, burst=5) == 5
    refused = await gcra.acquire("k", rate_per_second=rate, burst=5)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.1)
    clock.now += 0.05
    refused = await gcra.acquire("k", rate_per_second=rate, burst=5)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.05)
    clock.now += 0.05
    assert (await gcra.acquire("k", rate_per_second=rate, burst=5)).allowed
    assert not (await gcra.acquire("k", rate_per_second=rate, burst=5)).allowed
    # Ten seconds later the bucket holds the full burst again (never more).
    clock.now += 10
    assert await _fire(gcra, 20, rate=rate, burst=5) == 5
    # Over one minute at the sustained pace: rate * 60 admitted.
    clock.now += 10
    admitted = 0
    for _ in range(600):
        clock.now += 0.1
        admitted += (await gcra.acquire("k", rate_per_second=rate, burst=5)).allowed
    assert admitted == 600


async def test_keys_are_independent_and_bounded() -> None:
    gcra = LocalGcra(clock=FakeClock(), max_keys=3)
    for key in "abcde":
        assert await _fire(gcra, 3, rate=1.0, burst=2, key=key) == 2
    assert len(gcra) == 3


def test_parameters_are_validated_and_round_up() -> None:
    assert gcra_params(3.0, 1) == (333_334, 0)  # interval rounds up: never over-admits
    assert gcra_params(10.0, 3) == (100_000, 200_000)
    with pytest.raises(ValueError):
        gcra_params(0, 1)
    with pytest.raises(ValueError):
        gcra_params(1.0, 0)


@settings(max_examples=200, deadline=None)
@given(
    per_minute=st.integers(1, 6000),
    burst=st.integers(1, 50),
    gaps_ms=st.lists(st.integers(0, 3000), min_size=1, max_size=300),
)
async def test_no_window_admits_more_than_rate_times_window_plus_burst(
    per_minute: int, burst: int, gaps_ms: list[int]
) -> None:
    clock = FakeClock(0.0)
    gcra = LocalGcra(clock=clock)
    rate = per_minute / 60
    admitted_at: list[int] = []  # milliseconds
    now_ms = 0
    for gap in gaps_ms:
        now_ms += gap
        clock.now = now_ms / 1000
        if (await gcra.acquire("k", rate_per_second=rate, burst=burst)).allowed:
            admitted_at.append(now_ms)
    for i, start in enumerate(admitted_at):
        for j in range(i, len(admitted_at)):
            window = (admitted_at[j] - start) / 1000
            assert j - i + 1 <= rate * window + burst + 1e-9


# -- ClinicRateLimiter --------------------------------------------------------------------


class FlakyStore:
    """A shared store that fails while ``down`` is set, else answers like LocalGcra."""

    def __init__(self, clock: FakeClock) -> None:
        self.down = True
        self.calls = 0
        self._inner = LocalGcra(clock=clock)

    async def acquire(
        self, key: str, *, rate_per_second: float, burst: int, quantity: int = 1
    ) -> Decision:
        self.calls += 1
        if self.down:
            raise RedisConnectionError("connection refused")
        return await self._inner.acquire(
            key, rate_per_second=rate_per_second, burst=burst, quantity=quantity
        )


async def test_over_budget_raises_with_retry_after_and_logs_the_clinic_only() -> None:
    clock = FakeClock()
    limited: list[str] = []
    limiter = ClinicRateLimiter(
        per_minute=60, burst=2, local=LocalGcra(clock=clock), clock=clock, on_limited=limited.append
    )
    clinic = uuid.uuid4()
    await limiter.check(clinic)
    await limiter.check(clinic)
    with capture_logs() as logs, pytest.raises(RateLimited) as raised:
        await limiter.check(clinic)
    assert raised.value.code == "rate_limited"
    assert raised.value.retry_after == pytest.approx(1.0)
    assert limited == ["local"]
    assert limiter.over_budget(clinic)
    assert not limiter.over_budget(uuid.uuid4())
    [event] = [e for e in logs if e["event"] == "rate_limited"]
    assert set(event) == {"event", "log_level", "clinic_id", "backend", "retry_after"}
    assert event["clinic_id"] == str(clinic)
    await limiter.check(uuid.uuid4())  # another clinic is unaffected
    clock.now += 1.0
    assert not limiter.over_budget(clinic)
    await limiter.check(clinic)


async def test_override_is_cached_and_bad_or_failing_overrides_fall_back() -> None:
    clock = FakeClock()
    overrides: dict[uuid.UUID, int | None] = {}
    loads: list[uuid.UUID] = []
    failing = uuid.uuid4()

    async def load(clinic_id: uuid.UUID) -> int | None:
        loads.append(clinic_id)
        if clinic_id == failing:
            raise OSError("database down")
        return overrides.get(clinic_id)

    limiter = ClinicRateLimiter(
        per_minute=60, burst=1, load_override=load, override_ttl=30, clock=clock
    )
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    overrides[a] = 6
    overrides[c] = 0
    assert await limiter.budget(a) == 6
    assert await limiter.budget(b) == 60
    assert await limiter.budget(c) == 60  # non-positive overrides are ignored
    assert await limiter.budget(failing) == 60
    overrides[a] = 12
    assert await limiter.budget(a) == 6  # cached
    assert loads.count(a) == 1
    clock.now += 31
    assert await limiter.budget(a) == 12
    # The override sets the pace: 12/min means a 5 s wait after the burst (default: 1 s).
    await limiter.check(a)
    with pytest.raises(RateLimited) as raised:
        await limiter.check(a)
    assert raised.value.retry_after == pytest.approx(5.0)
    await limiter.check(b)
    with pytest.raises(RateLimited) as raised:
        await limiter.check(b)
    assert raised.value.retry_after == pytest.approx(1.0)


async def test_falls_back_to_local_when_the_store_fails_and_switches_back() -> None:
    clock = FakeClock()
    store = FlakyStore(clock)
    switches: list[str] = []
    limiter = ClinicRateLimiter(
        per_minute=60,
        burst=3,
        store=store,
        local=LocalGcra(clock=clock),
        probe_interval=5.0,
        on_switch=switches.append,
        clock=clock,
    )
    clinic = uuid.uuid4()
    with capture_logs() as logs:
        decisions = [await limiter.acquire(clinic) for _ in range(5)]
    assert [d.allowed for d, _ in decisions] == [True, True, True, False, False]
    assert {backend for _, backend in decisions} == {"local"}
    assert limiter.backend == "local"
    assert switches == ["local"]  # one transition, logged once
    assert [e["event"] for e in logs].count("rate_limit_fallback") == 1
    assert store.calls == 1  # no Redis call per request while degraded

    store.down = False
    clock.now += 1.0  # before the probe interval: still local
    _, backend = await limiter.acquire(clinic)
    assert backend == "local"
    clock.now += 5.0
    with capture_logs() as logs:
        decision, backend = await limiter.acquire(clinic)
    assert (decision.allowed, backend) == (True, "redis")
    assert limiter.backend == "redis"
    assert switches == ["local", "redis"]
    assert [e["event"] for e in logs] == ["rate_limit_recovered"]


async def test_concurrent_requests_share_one_override_lookup() -> None:
    loads = 0
    release = asyncio.Event()

    async def load(clinic_id: uuid.UUID) -> int | None:
        nonlocal loads
        loads += 1
        await release.wait()
        return 120

    limiter = ClinicRateLimiter(per_minute=60, burst=1, load_override=load)
    clinic = uuid.uuid4()
    waiting = [asyncio.ensure_future(limiter.budget(clinic)) for _ in range(20)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == [120] * 20
    assert loads == 1


class CountingStore:
    """A shared store (one GCRA, as Redis would hold) that counts its calls."""

    def __init__(self, clock: FakeClock) -> None:
        self.calls = 0
        self.asked: list[int] = []
        self._inner = LocalGcra(clock=clock)

    async def acquire(
        self, key: str, *, rate_per_second: float, burst: int, quantity: int = 1
    ) -> Decision:
        self.calls += 1
        self.asked.append(quantity)
        return await self._inner.acquire(
            key, rate_per_second=rate_per_second, burst=burst, quantity=quantity
        )


async def test_a_busy_clinic_is_charged_in_leases_not_per_request() -> None:
    clock = FakeClock()
    store = CountingStore(clock)
    limiter = ClinicRateLimiter(
        per_minute=600_000, burst=400, store=store, clock=clock, max_lease=32
    )
    clinic = uuid.uuid4()
    for _ in range(2000):  # one second's worth of a busy clinic: its rate is learnt
        clock.now += 0.0005
        await limiter.check(clinic)
    calls = store.calls
    for _ in range(2000):
        clock.now += 0.0005
        await limiter.check(clinic)
    assert store.calls - calls <= 2000 / 32 + 2
    assert max(store.asked) == 32


async def test_a_quiet_clinic_is_charged_one_request_at_a_time() -> None:
    clock = FakeClock()
    store = CountingStore(clock)
    limiter = ClinicRateLimiter(per_minute=600, burst=100, store=store, clock=clock)
    clinic = uuid.uuid4()
    for _ in range(20):
        clock.now += 1.5
        await limiter.check(clinic)
    assert set(store.asked) == {1}


@given(
    per_minute=st.integers(60, 6000),
    burst=st.integers(4, 200),
    gaps=st.lists(st.floats(0.0, 0.05), min_size=50, max_size=400),
)
@settings(max_examples=60, deadline=None)
async def test_leases_never_admit_more_than_the_shared_budget(
    per_minute: int, burst: int, gaps: list[float]
) -> None:
    """Two processes (limiters) share one store: whatever the arrival pattern, together
    they admit no more than GCRA allows over the whole span."""
    clock = FakeClock()
    store = CountingStore(clock)
    limiters = [
        ClinicRateLimiter(per_minute=per_minute, burst=burst, store=store, clock=clock)
        for _ in range(2)
    ]
    clinic = uuid.uuid4()
    admitted = 0
    start = clock.now
    for i, gap in enumerate(gaps):
        clock.now += gap
        try:
            await limiters[i % 2].check(clinic)
        except RateLimited:
            continue
        admitted += 1
    span = clock.now - start
    assert admitted <= burst + per_minute / 60 * span + 1


async def test_an_unused_lease_expires() -> None:
    clock = FakeClock()
    store = CountingStore(clock)
    limiter = ClinicRateLimiter(
        per_minute=600_000, burst=400, store=store, clock=clock, lease_ttl=1.0
    )
    clinic = uuid.uuid4()
    for _ in range(3000):
        clock.now += 0.0004
        await limiter.check(clinic)
    calls = store.calls
    clock.now += 1.5  # the lease left over has expired: the next request asks Redis
    await limiter.check(clinic)
    assert store.calls == calls + 1
