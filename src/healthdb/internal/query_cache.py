"""Query-result caching: read-through with race-free invalidation on committed writes.

Writes are tracked per session (which tables, which clinic) and the matching tags are
invalidated only after the transaction commits, so a rolled-back write evicts nothing and a
committed one is never followed by a stale hit in this process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session

from healthdb.cache import MISS, CacheKey, MemoryCache, table_tag
from healthdb.context import current_scope

WRITTEN_TAGS = "healthdb_written_tags"


def written_tags(session: Session) -> set[str]:
    """Tags of every table this session has written (read after commit)."""
    tags: set[str] = session.info.setdefault(WRITTEN_TAGS, set())
    return tags


def _row_tag(obj: Any) -> str:
    return table_tag(obj.__table__.name, getattr(obj, "clinic_id", None))


def _after_flush(session: Session, _context: Any) -> None:
    tags = written_tags(session)
    for obj in (*session.new, *session.dirty, *session.deleted):
        if hasattr(obj, "__table__"):
            tags.add(_row_tag(obj))


def _bulk_statement(state: ORMExecuteState) -> None:
    if not (state.is_update or state.is_delete or state.is_insert):
        return
    scope = current_scope()
    clinic = scope.clinic_id if scope else None
    for mapper in state.all_mappers:
        written_tags(state.session).add(table_tag(mapper.local_table.name, clinic))  # type: ignore[attr-defined]


def install(session_class: type[Session]) -> None:
    """Track written tables on ``session_class`` (idempotent)."""
    if not event.contains(session_class, "after_flush", _after_flush):
        event.listen(session_class, "after_flush", _after_flush)
    if not event.contains(session_class, "do_orm_execute", _bulk_statement):
        event.listen(session_class, "do_orm_execute", _bulk_statement)


class QueryCache:
    """Read-through over a :class:`MemoryCache`, keyed per clinic and role."""

    def __init__(self, *, store: MemoryCache, default_ttl: float) -> None:
        self.store = store
        self._default_ttl = default_ttl

    def get(self, key: CacheKey, *, partition: str = "") -> object:
        """The cached value of ``key`` in ``partition``, or :data:`~healthdb.cache.MISS`
        (a miss is counted by the :meth:`read_through` that follows it)."""
        return self.store.get(f"{partition}|{key.key}", count_miss=False)

    async def read_through(
        self,
        key: CacheKey,
        load: Callable[[], Awaitable[Any]],
        *,
        ttl: float | None = None,
        partition: str = "",
    ) -> tuple[Any, bool]:
        """Return ``(value, hit)``; on a miss, load and store unless invalidated meanwhile."""
        full_key = f"{partition}|{key.key}"
        value = self.store.get(full_key)
        if value is not MISS:
            return value, True
        generation = self.store.generation(key.tags)
        value = await load()
        self.store.set(
            full_key,
            value,
            ttl=ttl or self._default_ttl,
            tags=key.tags,
            if_generation=generation,
        )
        return value, False

    def invalidate(self, tags: set[str]) -> int:
        return self.store.invalidate_tags(tags)
