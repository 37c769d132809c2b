"""Brute-force protection for login: sliding windows of failures per account and per address.

An attempt is counted *when it starts* (:meth:`LoginThrottle.begin`), before any await, so a
burst of concurrent guesses cannot all slip past the check while the first ones are still
being verified. A successful attempt is taken back and clears the account's window; an
attempt that ends in an error rather than a verdict is taken back too (:meth:`abort`).

Keys are ``sha256(normalised e-mail)`` and the client address: no e-mail is kept in memory
in the clear. :class:`MemoryLoginThrottle` keeps the windows in this process; with several
service instances each would enforce its own limit (``instances x limit`` in total), so
with Redis configured the app uses :class:`~healthdb_api.auth.throttle_redis.
RedisLoginThrottle`, one set of windows for every instance, and this one only while Redis
is unreachable.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

Clock = Callable[[], float]

#: Windows kept before the oldest are dropped (bounded memory under a spray of addresses).
DEFAULT_MAX_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class Attempt:
    """A login attempt in progress: what :meth:`LoginThrottle.begin` counted."""

    account_key: str
    address_key: str | None
    started: float
    #: The attempt's id in a shared store ("" for an attempt counted in process memory).
    token: str = ""


class TooManyAttempts(Exception):
    """Refused without checking the password; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many failed login attempts")
        self.retry_after = retry_after


def account_key(email: str) -> str:
    return "acct:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()


def address_key(address: str | None) -> str | None:
    return None if not address else "addr:" + address


class LoginThrottle(Protocol):
    """Counts login attempts per account and per address in a sliding window."""

    @property
    def address_limit(self) -> int:
        """Attempts an address may make in the window."""
        ...

    async def begin(self, email: str, address: str | None) -> Attempt:
        """Count an attempt; raise :class:`TooManyAttempts` if either key is over its limit."""
        ...

    async def succeeded(self, attempt: Attempt) -> None:
        """The password was right: clear the account's window, take back the address count."""
        ...

    async def abort(self, attempt: Attempt) -> None:
        """The attempt ended without a verdict: take it back."""
        ...

    async def failures(self, key: str) -> int:
        """Attempts of ``key`` (:func:`account_key` or :func:`address_key`) in the window."""
        ...

    async def close(self) -> None: ...


class MemoryLoginThrottle:
    """Sliding-window failure counters in this process, with an injectable monotonic
    ``clock``. The methods are async for the :class:`LoginThrottle` protocol but never
    await: an attempt is counted atomically with its check."""

    def __init__(
        self,
        *,
        max_per_account: int = 5,
        max_per_address: int = 20,
        window: float = 900.0,
        clock: Clock = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if max_per_account < 1 or max_per_address < 1 or window <= 0 or max_keys < 1:
            raise ValueError("limits and window must be positive")
        self.max_per_account = max_per_account
        self.max_per_address = max_per_address
        self.window = float(window)
        self.clock = clock
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    # -- the login protocol ---------------------------------------------------------------

    async def begin(self, email: str, address: str | None) -> Attempt:
        """Count an attempt, or raise :class:`TooManyAttempts` if either key is over its limit.

        A refused attempt is not counted: the lock ends when the window passes, however
        often the caller retries meanwhile.
        """
        now = self.clock()
        acct = account_key(email)
        addr = address_key(address)
        wait = self._wait(acct, self.max_per_account, now)
        if addr is not None:
            wait = max(wait, self._wait(addr, self.max_per_address, now))
        if wait > 0:
            raise TooManyAttempts(max(1, math.ceil(wait)))
        self._record(acct, now)
        if addr is not None:
            self._record(addr, now)
        return Attempt(acct, addr, now)

    async def succeeded(self, attempt: Attempt) -> None:
        """The password was right: clear the account's window, take back the address count."""
        self._failures.pop(attempt.account_key, None)
        if attempt.address_key is not None:
            self._forget(attempt.address_key, attempt.started)

    async def abort(self, attempt: Attempt) -> None:
        """The attempt ended without a verdict (e.g. the database was down): take it back."""
        self._forget(attempt.account_key, attempt.started)
        if attempt.address_key is not None:
            self._forget(attempt.address_key, attempt.started)

    # -- introspection (tests, metrics) ---------------------------------------------------

    @property
    def address_limit(self) -> int:
        """Attempts an address may make in the window."""
        return self.max_per_address

    async def failures(self, key: str) -> int:
        """Failures of ``key`` (an :func:`account_key` or :func:`address_key`) in the window."""
        window = self._failures.get(key)
        if window is None:
            return 0
        self._expire(window, self.clock())
        return len(window)

    def __len__(self) -> int:
        return len(self._failures)

    async def close(self) -> None:
        """Nothing to release (the protocol's hook for shared stores)."""

    # -- internals ------------------------------------------------------------------------

    def _expire(self, window: deque[float], now: float) -> None:
        horizon = now - self.window
        while window and window[0] <= horizon:
            window.popleft()

    def _wait(self, key: str, limit: int, now: float) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        window = self._failures.get(key)
        if window is None:
            return 0.0
        self._expire(window, now)
        if not window:
            del self._failures[key]
            return 0.0
        if len(window) < limit:
            return 0.0
        # Allowed again once all but limit-1 of the failures have left the window.
        unlock_at = window[len(window) - limit] + self.window
        return max(0.0, unlock_at - now)

    def _record(self, key: str, now: float) -> None:
        window = self._failures.get(key)
        if window is None:
            if len(self._failures) >= self.max_keys:
                self._evict(now)
            window = self._failures[key] = deque()
        window.append(now)

    def _forget(self, key: str, stamp: float) -> None:
        window = self._failures.get(key)
        if window is None:
            return
        try:
            window.remove(stamp)
        except ValueError:
            return
        if not window:
            del self._failures[key]

    def _evict(self, now: float) -> None:
        """Drop expired windows; if still full, the least recently created ones."""
        for key in list(self._failures):
            window = self._failures[key]
            self._expire(window, now)
            if not window:
                del self._failures[key]
        excess = len(self._failures) - self.max_keys + 1
        for key in list(self._failures)[: max(0, excess)]:
            del self._failures[key]
