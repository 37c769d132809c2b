"""The driver pool: asyncpg connections for the paths that run whole transactions on the
driver (view reads, the audit group commit), without SQLAlchemy in between.

Measured on this project's hot path, a checkout from SQLAlchemy's pool (greenlet hop, pool
events, reset on return) cost more than the three round trips of a scoped read, and
asyncpg's own pool adds a reset round trip on every release. This pool is a semaphore and a
deque: a checkout that does not wait costs a few microseconds. What it keeps from a real
pool: a bound on connections, a bounded wait (:class:`~healthdb.errors.PoolTimeout`),
recycling after ``recycle`` seconds, and no connection ever handed out inside a
transaction of someone else: a connection comes back only when its user ended every
transaction it began; otherwise (an error mid-transaction that could not be rolled back, a
cancellation) it is terminated, never reused.

**Deferred commits.** A read-only transaction changes nothing, so its ``COMMIT`` need not
cost a round trip of its own: :meth:`DriverPool.transaction` with ``defer_commit`` returns
the connection still inside it, and the pool sends that ``COMMIT`` in front of the next
``BEGIN`` on the connection (``COMMIT; BEGIN ...``, one message), or on its own once the
connection has lingered idle for ``linger`` seconds. Only this pool hands the connection
out again, and every way out of it sends the pending ``COMMIT`` first, so the next user
never runs inside the previous one's transaction (nor sees its clinic setting).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import asyncpg

from healthdb.errors import PoolTimeout, ServiceClosed

__all__ = ["DriverDisconnect", "DriverPool", "DriverPoolStatus"]

Connect = Callable[[], Awaitable[asyncpg.Connection]]
# SQLSTATEs of a connection the server ended: connection exceptions, admin/crash shutdown.
_GONE = ("08", "57P01", "57P02", "57P03")


class DriverDisconnect(Exception):
    """The driver connection failed outside a SQL error (closed, reset, protocol state); it
    was dropped from the pool, so a re-run gets a fresh one."""


@dataclass(frozen=True, slots=True)
class DriverPoolStatus:
    size: int
    checked_out: int
    idle: int


@dataclass(slots=True)
class _Entry:
    conn: asyncpg.Connection
    born: float
    pending_since: float | None = None  # a read-only transaction awaits its COMMIT


class DriverPool:
    """At most ``size`` asyncpg connections made by ``connect``."""

    def __init__(
        self,
        *,
        connect: Connect,
        size: int,
        timeout: float,
        recycle: float,
        linger: float = 0.05,
    ) -> None:
        self._connect = connect
        self._size = size
        self._timeout = timeout
        self._recycle = recycle
        self._linger = linger
        self._slots = asyncio.Semaphore(size)
        self._idle: deque[_Entry] = deque()
        self._out = 0
        self._closed = False
        self._sweeper: asyncio.Task[None] | None = None

    def connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """A connection outside any transaction. SQL errors propagate as asyncpg raised them
        (any transaction rolled back); connection failures as :class:`DriverDisconnect`."""
        return _Checkout(self, None, defer_commit=False)

    def transaction(
        self, begin: str | Callable[[], str], *, defer_commit: bool = False
    ) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """One transaction: ``begin`` (simple-protocol text starting with ``BEGIN``, with its
        prelude) is sent on entry, ``COMMIT`` on a clean exit, at once or, with
        ``defer_commit`` (read-only transactions only), merged into the connection's next
        ``BEGIN``. A callable ``begin`` is called once a connection is held (a prelude that
        claims something, such as an audit lane, claims it only when about to use it)."""
        if isinstance(begin, str):
            _check_begin(begin)
        return _Checkout(self, begin, defer_commit=defer_commit)

    def status(self) -> DriverPoolStatus:
        return DriverPoolStatus(self._size, self._out, len(self._idle))

    async def close(self) -> None:
        """Close the idle connections; those in use are terminated when they come back."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        while self._idle:
            conn = self._idle.popleft().conn
            try:
                await asyncio.wait_for(conn.close(), 2)
            except (TimeoutError, OSError, asyncpg.InterfaceError):
                conn.terminate()

    async def _start(self, entry: _Entry, begin: str | Callable[[], str] | None) -> None:
        """End the previous user's deferred COMMIT, in the same message as ``begin``."""
        if callable(begin):
            begin = _check_begin(begin())
        if entry.pending_since is None:
            if begin is not None:
                await entry.conn.execute(begin)
            return
        entry.pending_since = None
        await entry.conn.execute("COMMIT" if begin is None else f"COMMIT; {begin}")

    def _give_back(self, entry: _Entry, clean: bool) -> None:
        if clean and not self._closed and not entry.conn.is_closed():
            self._idle.append(entry)
            if entry.pending_since is not None and self._sweeper is None:
                self._sweeper = asyncio.create_task(self._sweep(), name="healthdb-pool-sweeper")
        else:
            entry.pending_since = None
            entry.conn.terminate()

    async def _sweep(self) -> None:
        """COMMIT the deferred transactions of connections that stay idle: they hold a
        snapshot (and vacuum back) until then."""
        try:
            while any(e.pending_since is not None for e in self._idle):
                await asyncio.sleep(self._linger)
                due = time.monotonic() - self._linger
                for entry in [e for e in self._idle if e.pending_since is not None]:
                    if entry.pending_since is not None and entry.pending_since <= due:
                        await self._commit_idle(entry)
        finally:
            self._sweeper = None

    async def _commit_idle(self, entry: _Entry) -> None:
        if self._slots.locked() or entry not in self._idle:
            return  # in use again (its next user commits it), or every slot is busy
        self._idle.remove(entry)
        await self._slots.acquire()
        self._out += 1
        clean = False
        try:
            entry.pending_since = None
            await entry.conn.execute("COMMIT")
            clean = not entry.conn.is_in_transaction()
        except Exception:  # noqa: S110 (the connection is dropped below: nothing else to do)
            pass
        finally:
            self._out -= 1
            self._give_back(entry, clean)
            self._slots.release()

    async def _acquire_slot(self) -> None:
        if self._closed:
            raise ServiceClosed("the database service is closed")
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns without suspending
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise PoolTimeout(
                "no database connection became free in time", retry_after=1.0
            ) from None

    async def _take(self) -> _Entry:
        now = time.monotonic()
        while self._idle:
            entry = self._idle.pop()  # the most recently used: warm caches
            if entry.conn.is_closed():
                continue
            if self._recycle >= 0 and now - entry.born > self._recycle:
                entry.conn.terminate()
                continue
            return entry
        try:
            async with asyncio.timeout(self._timeout):
                return _Entry(await self._connect(), now)
        except TimeoutError:
            raise PoolTimeout("connecting to the database timed out", retry_after=1.0) from None


class _Checkout:
    """One checkout (a class, not a generator: it is entered on every read)."""

    __slots__ = ("_begin", "_defer", "_entry", "_pool")

    def __init__(
        self, pool: DriverPool, begin: str | Callable[[], str] | None, *, defer_commit: bool
    ) -> None:
        self._pool = pool
        self._begin = begin
        self._defer = defer_commit
        self._entry: _Entry | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        pool = self._pool
        await pool._acquire_slot()
        pool._out += 1
        try:
            self._entry = await pool._take()
            await pool._start(self._entry, self._begin)
        except BaseException as exc:
            await self._finish(exc)
            replacement = _translated(exc)
            if replacement is exc:
                raise
            raise replacement from exc
        return self._entry.conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None and self._entry is not None and self._begin is not None:
            try:
                if self._defer:
                    self._entry.pending_since = time.monotonic()
                else:
                    await self._entry.conn.execute("COMMIT")
            except BaseException as failed:
                await self._finish(failed)
                raise _translated(failed) from failed
        await self._finish(exc)
        if exc is not None:
            replacement = _translated(exc)
            if replacement is not exc:
                raise replacement from exc

    async def _finish(self, exc: BaseException | None) -> None:
        """Give the connection back (clean) or terminate it; free the slot."""
        pool, entry = self._pool, self._entry
        self._entry = None
        try:
            clean = False
            if entry is not None:
                if exc is None:
                    busy = entry.conn.is_in_transaction()
                    clean = busy if entry.pending_since is not None else not busy
                elif isinstance(exc, Exception) and _translated(exc) is exc:
                    # A SQL error, or the caller's own (a 404 found mid-transaction): the
                    # connection is sound. Cancellation and connection failures are not.
                    clean = await _rolled_back(entry)
        finally:
            pool._out -= 1
            if entry is not None:
                pool._give_back(entry, clean)
            pool._slots.release()


def _check_begin(begin: str) -> str:
    if not begin.lstrip().upper().startswith("BEGIN"):
        raise ValueError("a transaction starts with BEGIN")
    return begin


def _translated(exc: BaseException) -> BaseException:
    """Connection failures become :class:`DriverDisconnect`; anything else is unchanged."""
    unchanged = exc
    if isinstance(exc, asyncpg.PostgresError):
        state: str = exc.sqlstate or ""
        if state.startswith(_GONE):
            return DriverDisconnect("the database ended the connection")
        return unchanged
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError | OSError):
        # The connection, not the SQL, failed (closed under the user, protocol state).
        return DriverDisconnect("the database connection failed")
    return unchanged


async def _rolled_back(entry: _Entry) -> bool:
    entry.pending_since = None
    conn = entry.conn
    try:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
    except Exception:  # the connection is gone: it is terminated, not reused
        return False
    return not conn.is_in_transaction()
