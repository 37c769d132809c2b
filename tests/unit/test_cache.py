"""MemoryCache: TTL, LRU bound, tag invalidation, and the generation guard."""

from __future__ import annotations

import asyncio

from healthdb.cache import MISS, MemoryCache
from healthdb.internal.query_cache import QueryCache
from healthdb.query.keys import CacheKey


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


T = frozenset({"patients:a"})


def test_ttl_expiry_with_a_fake_clock() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    cache.set("k", "v", ttl=10, tags=T)
    clock.now += 9.9
    assert cache.get("k") == "v"
    clock.now += 0.1  # exactly at expiry: gone
    assert cache.get("k") is MISS
    assert len(cache) == 0
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.hit_ratio == 0.5


def test_missing_key_is_a_miss_and_none_is_a_value() -> None:
    cache = MemoryCache()
    assert cache.get("nope") is MISS
    cache.set("k", None, ttl=5, tags=T)
    assert cache.get("k") is None
    assert cache.hit_ratio == 0.5


def test_lru_bound_evicts_least_recently_used() -> None:
    cache = MemoryCache(max_entries=3)
    for key in "abc":
        cache.set(key, key.upper(), ttl=60, tags=T)
    assert cache.get("a") == "A"  # a becomes most recent; b is now the oldest
    cache.set("d", "D", ttl=60, tags=T)
    assert len(cache) == 3
    assert cache.get("b") is MISS
    assert [cache.get(k) for k in "acd"] == ["A", "C", "D"]
    cache.set("c", "C2", ttl=60, tags=T)  # overwrite refreshes recency without growing
    cache.set("e", "E", ttl=60, tags=T)
    assert len(cache) == 3
    assert cache.get("a") is MISS
    assert cache.get("c") == "C2"


def test_tag_invalidation_evicts_exactly_the_tagged_entries() -> None:
    cache = MemoryCache()
    cache.set("p1", 1, ttl=60, tags=frozenset({"patients:a"}))
    cache.set("p2", 2, ttl=60, tags=frozenset({"patients:a", "users:a"}))
    cache.set("pb", 3, ttl=60, tags=frozenset({"patients:b"}))
    cache.set("u", 4, ttl=60, tags=frozenset({"users:a"}))
    assert cache.invalidate_tags({"patients:a"}) == 2
    assert cache.get("p1") is MISS
    assert cache.get("p2") is MISS
    assert cache.get("pb") == 3
    assert cache.get("u") == 4
    assert cache.invalidate_tags(set()) == 0
    assert cache.invalidate_tags({"nothing:here"}) == 0
    assert len(cache) == 2


def test_generation_guard_refuses_a_store_after_invalidation() -> None:
    cache = MemoryCache()
    tags = frozenset({"patients:a", "users:a"})
    before = cache.generation(tags)
    cache.invalidate_tags({"users:a"})  # a write committed while the reader was querying
    assert cache.set("k", "stale", ttl=60, tags=tags, if_generation=before) is False
    assert cache.get("k") is MISS
    # A fresh snapshot is accepted; an unrelated tag's invalidation does not interfere.
    now = cache.generation(tags)
    cache.invalidate_tags({"patients:b"})
    assert cache.set("k", "fresh", ttl=60, tags=tags, if_generation=now) is True
    assert cache.get("k") == "fresh"


def test_generation_guard_survives_clear() -> None:
    """clear() must not reset generations: an in-flight reader's old snapshot could match again
    after clear() + one invalidation, letting a stale value in."""
    cache = MemoryCache()
    tags = frozenset({"patients:a"})
    cache.invalidate_tags(tags)
    before = cache.generation(tags)  # reader starts
    cache.clear()
    cache.invalidate_tags(tags)  # a write commits
    assert cache.set("k", "stale", ttl=60, tags=tags, if_generation=before) is False
    assert cache.get("k") is MISS


def test_generation_snapshot_is_order_independent() -> None:
    cache = MemoryCache()
    cache.invalidate_tags({"b"})
    snapshot = cache.generation(["a", "b"])
    assert snapshot == cache.generation(["b", "a"])
    cache.invalidate_tags({"a"})
    assert cache.generation(["b", "a"]) != snapshot


async def test_read_through_refuses_to_store_a_value_read_before_an_invalidation() -> None:
    store = MemoryCache()
    cache = QueryCache(store=store, default_ttl=60)
    key = CacheKey("a:patient:1", frozenset({"patients:a"}))
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_load() -> str:
        started.set()
        await release.wait()
        return "old"

    reader = asyncio.create_task(cache.read_through(key, slow_load, partition="a:doctor"))
    await started.wait()
    cache.invalidate({"patients:a"})
    release.set()
    assert await reader == ("old", False)

    async def load_new() -> str:
        return "new"

    assert await cache.read_through(key, load_new, partition="a:doctor") == ("new", False)
    assert await cache.read_through(key, load_new, partition="a:doctor") == ("new", True)


async def test_read_through_partitions_are_separate() -> None:
    cache = QueryCache(store=MemoryCache(), default_ttl=60)
    key = CacheKey("a:patient:1", frozenset({"patients:a"}))
    calls: list[str] = []

    def loader(value: str):  # type: ignore[no-untyped-def]
        async def load() -> str:
            calls.append(value)
            return value

        return load

    assert await cache.read_through(key, loader("doc"), partition="a:doctor") == ("doc", False)
    assert await cache.read_through(key, loader("nurse"), partition="a:nurse") == ("nurse", False)
    assert await cache.read_through(key, loader("x"), partition="a:doctor") == ("doc", True)
    assert calls == ["doc", "nurse"]


async def test_read_through_uses_the_given_ttl() -> None:
    clock = FakeClock()
    cache = QueryCache(store=MemoryCache(clock=clock), default_ttl=60)
    key = CacheKey("k", T)

    async def load() -> int:
        return 1

    await cache.read_through(key, load, ttl=1)
    clock.now += 1.5
    assert (await cache.read_through(key, load))[1] is False
    clock.now += 59  # default ttl 60 still running
    assert (await cache.read_through(key, load))[1] is True
