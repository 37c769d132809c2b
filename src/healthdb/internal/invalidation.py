"""Cross-process cache invalidation over Redis pub/sub.

Cached values stay in each process (nothing PHI-bearing is serialised into Redis); only
tag names travel. When the subscription drops, the local cache is cleared on reconnect,
because invalidations may have been missed meanwhile. Redis being down never fails a
write: the commit already happened, the publish is best-effort and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger("healthdb.cache")
CHANNEL = "healthdb:invalidate"


class InvalidationBus:
    """Publishes this process's invalidations and applies everyone else's."""

    def __init__(
        self,
        *,
        client: Redis,
        on_remote: Callable[[set[str]], object],
        on_reset: Callable[[], object],
        channel: str = CHANNEL,
        publish_timeout: float = 0.25,
    ) -> None:
        self._client = client
        self._on_remote = on_remote
        self._on_reset = on_reset
        self._channel = channel
        self._timeout = publish_timeout
        self.origin = uuid.uuid4().hex
        self.publish_failures = 0
        self.published = 0  # messages this process sent
        self.applied = 0  # messages from other processes this process acted on
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start listening in the background (returns without waiting for Redis)."""
        self._task = asyncio.create_task(self._listen(), name="healthdb-invalidation")

    async def publish(self, tags: set[str]) -> bool:
        message = json.dumps({"origin": self.origin, "tags": sorted(tags)})
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.publish(self._channel, message)
        except (RedisError, OSError, TimeoutError):
            self.publish_failures += 1
            log.warning("cache_invalidation_publish_failed", tags=len(tags))
            return False
        self.published += 1
        return True

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._subscribe_once()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError):
                self.connected.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                delay = 0.1

    async def _subscribe_once(self) -> None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            self._on_reset()  # anything cached before (re)subscribing may have missed a message
            self.connected.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    self._apply(message.get("data"))
        finally:
            self.connected.clear()
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    def _apply(self, data: object) -> None:
        try:
            payload = json.loads(data if isinstance(data, str | bytes) else "")
            tags = {str(t) for t in payload["tags"]}
            origin = payload["origin"]
        except (ValueError, KeyError, TypeError):
            log.warning("cache_invalidation_bad_message")
            return
        if origin != self.origin:
            self._on_remote(tags)
            self.applied += 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()
