"""The login throttle in Redis: one set of sliding windows for every service instance.

Each window is a sorted set of attempt ids scored by their start time. :data:`BEGIN_LUA`
drops the expired ones, checks every key against its limit and, only if all are under it,
adds the attempt to each, in one atomic script: concurrent guesses on several instances
cannot all slip past the check. The script reads Redis ``TIME`` so every instance shares a
clock (``clock`` is for tests). Keys expire with their window.

Redis down never opens the door: an attempt Redis cannot count is counted by the
in-process fallback (:class:`~healthdb_api.auth.throttle.MemoryLoginThrottle`), and Redis is
probed again every ``probe_interval`` seconds. Taking an attempt back (success, abort) is
best-effort: if it fails, the attempt stays counted until its window passes, which errs on
the side of refusing.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from healthdb_api.auth.throttle import (
    Attempt,
    Clock,
    MemoryLoginThrottle,
    TooManyAttempts,
    account_key,
    address_key,
)

log = structlog.get_logger("healthdb_api.auth")

KEY_PREFIX = "healthdb:login:"
MICROS = 1_000_000
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)

_NOW = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
"""

#: KEYS: the windows (account, then address if any). ARGV: now (µs, '' = Redis TIME),
#: window (µs), attempt id, then one limit per key. Returns 0 (counted) or the wait in µs.
BEGIN_LUA = (
    _NOW
    + """
local window = tonumber(ARGV[2])
local wait = 0
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local limit = tonumber(ARGV[3 + i])
  local n = redis.call('ZCARD', key)
  if n >= limit then
    local oldest = redis.call('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')
    local until_free = tonumber(oldest[2]) + window - now
    if until_free > wait then wait = until_free end
  end
end
if wait > 0 then return math.ceil(wait) end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, math.ceil(window / 1000))
end
return 0
"""
)

#: KEYS: one window. ARGV: now (µs, '' = Redis TIME), window (µs). Attempts in the window.
COUNT_LUA = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
"""
)


class RedisLoginThrottle:
    """:class:`~healthdb_api.auth.throttle.LoginThrottle` shared through Redis."""

    def __init__(
        self,
        client: Redis,
        *,
        fallback: MemoryLoginThrottle,
        timeout: float,
        prefix: str = KEY_PREFIX,
        clock: Clock | None = None,
        probe_interval: float = 5.0,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.client = client
        self.fallback = fallback
        self._timeout = timeout
        self._prefix = prefix
        self._clock = clock
        self._probe_interval = probe_interval
        self._monotonic = monotonic
        self._next_probe = 0.0
        self.degraded = False
        self._begin = client.register_script(BEGIN_LUA)
        self._count = client.register_script(COUNT_LUA)

    @property
    def address_limit(self) -> int:
        """Attempts an address may make in the window (the same in Redis and in process)."""
        return self.fallback.max_per_address

    @property
    def backend(self) -> str:
        """Where attempts are being counted: ``redis`` or ``local`` (Redis unreachable)."""
        return "local" if self.degraded else "redis"

    async def begin(self, email: str, address: str | None) -> Attempt:
        """Count an attempt in Redis (in process memory while Redis is unreachable)."""
        if self._redis_due():
            try:
                return await self._begin_shared(account_key(email), address_key(address))
            except _REDIS_ERRORS as exc:
                self._degrade(exc)
        return await self.fallback.begin(email, address)

    async def succeeded(self, attempt: Attempt) -> None:
        """Clear the account's window and take back the address's count of this attempt."""
        if not attempt.token:
            return await self.fallback.succeeded(attempt)

        async def release() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(self._prefix + attempt.account_key)
                if attempt.address_key is not None:
                    pipe.zrem(self._prefix + attempt.address_key, attempt.token)
                await pipe.execute()

        await self._best_effort(release)

    async def abort(self, attempt: Attempt) -> None:
        """Take the attempt back from both windows."""
        if not attempt.token:
            return await self.fallback.abort(attempt)

        async def release() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                for key in (attempt.account_key, attempt.address_key):
                    if key is not None:
                        pipe.zrem(self._prefix + key, attempt.token)
                await pipe.execute()

        await self._best_effort(release)

    async def failures(self, key: str) -> int:
        """Attempts of ``key`` in the window, as Redis counts them (as this process counts
        them while Redis is unreachable)."""
        if self._redis_due():
            try:
                async with asyncio.timeout(self._timeout):
                    count = int(await self._count(keys=[self._prefix + key], args=self._args()))
            except _REDIS_ERRORS as exc:
                self._degrade(exc)
            else:
                self._recover()
                return count
        return await self.fallback.failures(key)

    async def close(self) -> None:
        await self.client.aclose()

    # -- internals ------------------------------------------------------------------------

    def _args(self) -> list[str | int]:
        now = "" if self._clock is None else str(round(self._clock() * MICROS))
        return [now, round(self.fallback.window * MICROS)]

    async def _begin_shared(self, acct: str, addr: str | None) -> Attempt:
        token = uuid.uuid4().hex
        keys = [self._prefix + acct]
        limits = [self.fallback.max_per_account]
        if addr is not None:
            keys.append(self._prefix + addr)
            limits.append(self.fallback.max_per_address)
        async with asyncio.timeout(self._timeout):
            wait = int(await self._begin(keys=keys, args=[*self._args(), token, *limits]))
        self._recover()
        if wait > 0:
            raise TooManyAttempts(max(1, math.ceil(wait / MICROS)))
        return Attempt(acct, addr, self._monotonic(), token=token)

    async def _best_effort(self, release: Callable[[], Awaitable[None]]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await release()
        except _REDIS_ERRORS as exc:
            log.warning("login_throttle_release_failed", error_type=type(exc).__name__)

    def _redis_due(self) -> bool:
        if not self.degraded:
            return True
        now = self._monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + self._probe_interval  # this attempt probes; others wait
        return True

    def _degrade(self, exc: BaseException) -> None:
        self._next_probe = self._monotonic() + self._probe_interval
        if not self.degraded:
            self.degraded = True
            log.warning("login_throttle_fallback", backend="local", error_type=type(exc).__name__)

    def _recover(self) -> None:
        if self.degraded:
            self.degraded = False
            log.info("login_throttle_recovered", backend="redis")
