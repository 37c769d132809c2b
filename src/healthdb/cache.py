"""In-process cache tier: TTL, bounded size (LRU), tag invalidation with generations.

Generations close the read/invalidate race: a reader snapshots the generations of its tags
before it queries; if a write invalidates one of them meanwhile, the reader's store is
refused, so a value read before a committed write is never served after it.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final


class _Miss:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"


MISS: Final = _Miss()


@dataclass(frozen=True, slots=True)
class CacheKey:
    """A cache key and the tags whose invalidation evicts it."""

    key: str
    tags: frozenset[str]


def table_tag(table: str, clinic_id: uuid.UUID | None) -> str:
    """The tag a write to ``table`` in ``clinic_id`` invalidates (``None``: global table)."""
    return f"{table}:{clinic_id or '*'}"


@dataclass(slots=True)
class _Entry:
    value: object
    expires_at: float
    tags: frozenset[str]


class MemoryCache:
    """A bounded TTL cache for one process. Values are shared: treat them as read-only."""

    def __init__(
        self, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._generations: dict[str, int] = {}
        self._epoch = 0
        self._max_entries = max_entries
        self._clock = clock
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, *, count_miss: bool = True) -> object:
        """The cached value, or :data:`MISS` (``count_miss=False``: a look that a counted
        one follows on a miss)."""
        entry = self._entries.get(key)
        if entry is None or entry.expires_at <= self._clock():
            if entry is not None:
                del self._entries[key]
            if count_miss:
                self.misses += 1
            return MISS
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.value

    def generation(self, tags: Iterable[str]) -> tuple[int, ...]:
        """Snapshot to pass to :meth:`set` as ``if_generation``."""
        return (self._epoch, *(self._generations.get(tag, 0) for tag in sorted(tags)))

    def set(
        self,
        key: str,
        value: object,
        *,
        ttl: float,
        tags: frozenset[str],
        if_generation: tuple[int, ...] | None = None,
    ) -> bool:
        """Store unless a tag was invalidated since ``if_generation`` was taken."""
        if if_generation is not None and if_generation != self.generation(tags):
            return False
        self._entries[key] = _Entry(value, self._clock() + ttl, tags)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return True

    def invalidate_tags(self, tags: Iterable[str]) -> int:
        """Evict every entry carrying any of ``tags``; return how many went."""
        wanted = set(tags)
        if not wanted:
            return 0
        for tag in wanted:
            self._generations[tag] = self._generations.get(tag, 0) + 1
        doomed = [k for k, e in self._entries.items() if e.tags & wanted]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def clear(self) -> None:
        """Drop every entry; loads that started before the clear will not be stored."""
        self._entries.clear()
        self._epoch += 1

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
