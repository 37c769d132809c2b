"""Per-clinic request budgets: GCRA in Redis (shared by every process), locally as fallback.

The algorithm is GCRA (the generic cell rate algorithm), a token bucket expressed as one
timestamp per key, the *theoretical arrival time* (TAT). A budget is a rate plus a burst:

* ``rate_per_second`` — the sustained rate (the clinic's per-minute budget / 60);
* ``burst`` — how many requests may arrive at the same instant (the bucket's capacity, ≥ 1).

So in *any* time window of length ``W`` at most ``burst + rate_per_second * W`` requests are
admitted; over a minute that is ``per_minute + burst``. Times are integer microseconds and
the emission interval is rounded *up*, so rounding can only refuse, never over-admit.

:class:`RedisGcra` runs the whole decision in one Lua script (read TAT, decide, write TAT
with a TTL) so concurrent callers in any number of processes cannot race; it reads the
clock with Redis ``TIME`` so all processes share one clock. Every call is bounded by a
timeout. :class:`LocalGcra` is the same algorithm in process memory, with a bounded number
of keys. :class:`ClinicRateLimiter` charges clinics against Redis while it answers and
falls back to the local limiter when it does not — the local budget is **per process**, so
while Redis is down N processes admit up to N times the budget. It probes Redis again every
``probe_interval`` seconds and switches back as soon as a call succeeds.

**Leases.** A round trip to Redis per request cost as much CPU as the rest of a cached
request. A busy clinic's requests are therefore charged to Redis in small batches: one
script call charges ``quantity`` requests at once (granting as many of them as conform now,
:data:`GCRA_LUA`), and this process then admits exactly that many, within ``lease_ttl``
seconds. Every admitted request was charged in Redis before it was admitted, so leases never
over-admit across processes; what they can do is waste the unused rest of a lease when it
expires (at most ``max_lease`` requests per process and clinic, sized from the clinic's
recent rate in this process, so a quiet clinic is charged one request at a time).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from healthdb.errors import RateLimited

log = structlog.get_logger("healthdb.rate_limit")
Clock = Callable[[], float]
MICROS = 1_000_000
KEY_PREFIX = "healthdb:rl:"
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for one request; ``retry_after`` (seconds) is 0 when allowed.
    ``granted``: how many of the requests asked for were charged (0 when refused)."""

    allowed: bool
    retry_after: float = 0.0
    granted: int = 1


class RateLimitStore(Protocol):
    """Where GCRA state lives. Each call charges up to ``quantity`` requests to ``key``: as
    many as conform now (at least one, or the call is refused)."""

    async def acquire(
        self, key: str, *, rate_per_second: float, burst: int, quantity: int = 1
    ) -> Decision: ...


def gcra_params(rate_per_second: float, burst: int) -> tuple[int, int]:
    """(emission interval, delay tolerance) in microseconds; the interval rounds up."""
    if not rate_per_second > 0:
        raise ValueError("rate_per_second must be positive")
    if burst < 1:
        raise ValueError("burst must be at least 1")
    interval = max(1, math.ceil(MICROS / rate_per_second))
    return interval, interval * (burst - 1)


class LocalGcra:
    """GCRA in this process: exact, lock-free (single event loop), at most ``max_keys`` keys.

    When full, the least recently used key is forgotten (it restarts with a full burst).
    """

    def __init__(self, *, clock: Clock = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._tat: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tat)

    async def acquire(
        self, key: str, *, rate_per_second: float, burst: int, quantity: int = 1
    ) -> Decision:
        interval, tolerance = gcra_params(rate_per_second, burst)
        now = round(self._clock() * MICROS)
        tat = max(self._tat.get(key, now), now)
        allow_at = tat - tolerance
        if now < allow_at:
            self._tat.move_to_end(key)
            return Decision(False, (allow_at - now) / MICROS, 0)
        granted = min(quantity, (now - allow_at) // interval + 1)
        self._tat[key] = tat + granted * interval
        self._tat.move_to_end(key)
        while len(self._tat) > self._max_keys:
            self._tat.popitem(last=False)
        return Decision(True, 0.0, granted)


# KEYS[1] = key; ARGV = interval µs, tolerance µs, now µs ("" = use the server clock),
# quantity. Returns {granted (0 = refused), microseconds until a request conforms}.
GCRA_LUA = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local now
if ARGV[3] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[3])
end
local quantity = tonumber(ARGV[4] or '1') or 1
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then
  return {0, allow_at - now}
end
local granted = math.min(quantity, math.floor((now - allow_at) / interval) + 1)
local new_tat = tat + granted * interval
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', ttl_ms))
return {granted, 0}
"""


class RedisGcra:
    """GCRA in Redis: one atomic script per request, keys expire once their bucket is full.

    ``clock`` is for tests only: by default the script reads Redis ``TIME``, so every process
    uses the same clock.
    """

    def __init__(
        self,
        client: Redis,
        *,
        timeout: float,
        prefix: str = KEY_PREFIX,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self._timeout = timeout
        self._prefix = prefix
        self._clock = clock
        self._script = client.register_script(GCRA_LUA)

    async def acquire(
        self, key: str, *, rate_per_second: float, burst: int, quantity: int = 1
    ) -> Decision:
        interval, tolerance = gcra_params(rate_per_second, burst)
        now = "" if self._clock is None else str(round(self._clock() * MICROS))
        async with asyncio.timeout(self._timeout):
            granted, wait = await self._script(
                keys=[self._prefix + key], args=[interval, tolerance, now, quantity]
            )
        return Decision(bool(granted), int(wait) / MICROS, int(granted))

    async def close(self) -> None:
        await self.client.aclose()


OverrideLoader = Callable[[uuid.UUID], Awaitable[int | None]]


@dataclass(slots=True)
class _Lease:
    """Requests of one clinic already charged in Redis, not yet admitted here."""

    remaining: int = 0
    expires: float = 0.0
    window: float = 0.0  # start of the current one-second count
    count: int = 0  # requests seen in that second
    rate: float = 0.0  # requests per second in the last full second
    refill: asyncio.Future[None] | None = None


class ClinicRateLimiter:
    """Charges one request to a clinic's budget; raises :class:`RateLimited` when over it.

    The budget is ``per_minute`` (or the clinic's override, from ``load_override``, cached
    for ``override_ttl`` seconds) with ``burst``. ``on_limited(backend)`` and
    ``on_switch(backend)`` feed metrics; refusals are logged with the clinic id only.
    """

    def __init__(
        self,
        *,
        per_minute: int,
        burst: int,
        store: RateLimitStore | None = None,
        local: LocalGcra | None = None,
        load_override: OverrideLoader | None = None,
        override_ttl: float = 30.0,
        probe_interval: float = 5.0,
        max_cached: int = 10_000,
        on_limited: Callable[[str], object] = lambda _backend: None,
        on_switch: Callable[[str], object] = lambda _backend: None,
        clock: Clock = time.monotonic,
        max_lease: int = 32,
        lease_ttl: float = 1.0,
    ) -> None:
        gcra_params(per_minute / 60, burst)  # validate early
        self.per_minute = per_minute
        self.burst = burst
        self.store = store
        self.local = local or LocalGcra(clock=clock)
        self._load_override = load_override
        self._override_ttl = override_ttl
        self._probe_interval = probe_interval
        self._max_cached = max_cached
        self._on_limited = on_limited
        self._on_switch = on_switch
        self._clock = clock
        self._degraded_since: float | None = None
        self._next_probe = 0.0
        self._overrides: OrderedDict[uuid.UUID, tuple[float, int | None]] = OrderedDict()
        self._refused_until: OrderedDict[uuid.UUID, float] = OrderedDict()
        self._loading: dict[uuid.UUID, asyncio.Future[int | None]] = {}
        # A lease never exceeds a quarter of the burst: the rest stays for other processes.
        self._max_lease = max(1, min(max_lease, burst // 4))
        self._lease_ttl = lease_ttl
        self._leases: OrderedDict[str, _Lease] = OrderedDict()

    @property
    def backend(self) -> str:
        """``"redis"`` while the shared store answers, ``"local"`` otherwise."""
        return "redis" if self.store is not None and self._degraded_since is None else "local"

    async def check(self, clinic_id: uuid.UUID) -> None:
        """Charge one request; raise :class:`RateLimited` when the clinic is over budget."""
        decision, backend = await self.acquire(clinic_id)
        if decision.allowed:
            return
        now = self._clock()
        self._remember(self._refused_until, clinic_id, now + decision.retry_after)
        self._on_limited(backend)
        log.warning(
            "rate_limited",
            clinic_id=str(clinic_id),
            backend=backend,
            retry_after=round(decision.retry_after, 3),
        )
        raise RateLimited(
            "the clinic's request budget is exhausted", retry_after=decision.retry_after
        )

    async def acquire(self, clinic_id: uuid.UUID) -> tuple[Decision, str]:
        """Charge one request; return the decision and the backend that made it."""
        per_minute = await self.budget(clinic_id)
        rate = per_minute / 60
        key = str(clinic_id)
        if self.store is not None and self._redis_due():
            try:
                decision = await self._leased(self.store, key, rate)
            except (RedisError, OSError, TimeoutError) as exc:
                self._degrade(exc)
            else:
                self._recover()
                return decision, "redis"
        decision = await self.local.acquire(key, rate_per_second=rate, burst=self.burst)
        return decision, "local"

    async def _leased(self, store: RateLimitStore, key: str, rate: float) -> Decision:
        """Admit from this process's lease of ``key``, refilling it from ``store``."""
        lease = self._leases.get(key)
        if lease is None:
            lease = _Lease()
            self._remember(self._leases, key, lease)
        now = self._clock()
        if now - lease.window >= 1.0:
            lease.rate = lease.count / max(now - lease.window, 1.0) if lease.window else 0.0
            lease.window, lease.count = now, 0
        lease.count += 1
        for _ in range(8):  # other waiters may take a refill before this one gets to it
            if lease.remaining > 0 and now < lease.expires:
                lease.remaining -= 1
                return Decision(True)
            if lease.refill is None:
                return await self._refill(store, key, rate, lease, now)
            await asyncio.shield(lease.refill)
            now = self._clock()
        return await self._refill(store, key, rate, lease, now)

    async def _refill(
        self, store: RateLimitStore, key: str, rate: float, lease: _Lease, now: float
    ) -> Decision:
        # Sized for the next twentieth of a second at the clinic's recent rate here.
        size = max(1, min(self._max_lease, math.ceil(lease.rate / 20)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lease.refill = done
        try:
            decision = await store.acquire(
                key, rate_per_second=rate, burst=self.burst, quantity=size
            )
        finally:
            lease.refill = None
            done.set_result(None)
        if decision.allowed:
            # This request takes one; the rest may be admitted here until the lease expires.
            lease.remaining = decision.granted - 1
            lease.expires = now + self._lease_ttl
        return decision

    def over_budget(self, clinic_id: uuid.UUID) -> bool:
        """Whether this process refused the clinic recently and its wait has not elapsed."""
        until = self._refused_until.get(clinic_id)
        return until is not None and self._clock() < until

    async def budget(self, clinic_id: uuid.UUID) -> int:
        """The clinic's requests per minute: its override, else the default."""
        if self._load_override is None:
            return self.per_minute
        cached = self._overrides.get(clinic_id)
        if cached is not None and cached[0] > self._clock():
            value = cached[1]
        else:
            # One lookup per clinic at a time, however many requests are waiting for it.
            loading = self._loading.get(clinic_id)
            if loading is None:
                loading = asyncio.ensure_future(self._load(clinic_id, self._load_override))
                self._loading[clinic_id] = loading
                loading.add_done_callback(lambda _: self._loading.pop(clinic_id, None))
            value = await asyncio.shield(loading)
        return self.per_minute if value is None else value

    async def _load(self, clinic_id: uuid.UUID, load: OverrideLoader) -> int | None:
        stale = self._overrides.get(clinic_id)
        try:
            value = await load(clinic_id)
        except Exception as exc:  # a budget lookup must never fail the request
            log.warning("rate_limit_override_unavailable", error_type=type(exc).__name__)
            value = stale[1] if stale is not None else None
            self._remember(self._overrides, clinic_id, (self._clock() + 5.0, value))
            return value
        if value is not None and value < 1:
            log.warning("rate_limit_override_ignored", clinic_id=str(clinic_id))
            value = None
        self._remember(self._overrides, clinic_id, (self._clock() + self._override_ttl, value))
        return value

    def _redis_due(self) -> bool:
        if self._degraded_since is None:
            return True
        now = self._clock()
        if now < self._next_probe:
            return False
        self._next_probe = now + self._probe_interval  # this call probes; the others wait
        return True

    def _degrade(self, exc: BaseException) -> None:
        now = self._clock()
        self._next_probe = now + self._probe_interval
        if self._degraded_since is None:
            self._degraded_since = now
            self._on_switch("local")
            log.warning(
                "rate_limit_fallback",
                backend="local",
                scope="per_process",
                error_type=type(exc).__name__,
            )

    def _recover(self) -> None:
        if self._degraded_since is not None:
            down_for = self._clock() - self._degraded_since
            self._degraded_since = None
            self._on_switch("redis")
            log.info("rate_limit_recovered", backend="redis", degraded_seconds=round(down_for, 1))

    def _remember(self, cache: OrderedDict[K, V], key: K, value: V) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self._max_cached:
            cache.popitem(last=False)

    async def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            await close()
