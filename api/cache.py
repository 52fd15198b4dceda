"""Answer cache for GET /segments: Redis when REDIS_URL is set, else in-process.

A cache never fails a request: when Redis is down or slow the caller gets a miss (and a write
is dropped), the outage is logged once, and Redis is tried again after a short back-off.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streams.events import kept

logger = logging.getLogger(__name__)


class AnswerCache(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...
    async def close(self) -> None: ...


class InProcessCache:
    """A small TTL cache; entries expire lazily and the oldest go first past ``max_entries``."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._data: dict[str, tuple[float, bytes]] = {}
        self._max = max_entries

    async def get(self, key: str) -> bytes | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        expires, value = hit
        if expires < time.monotonic():
            self._data.pop(key, None)
            return None
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        self._data.pop(key, None)
        # An exact-size copy: orjson's output holds a 4 KiB buffer however short the answer.
        self._data[key] = (time.monotonic() + ttl_s, kept(value))
        while len(self._data) > self._max:
            self._data.pop(next(iter(self._data)))

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """Redis-backed cache with short timeouts and a back-off after a failure."""

    def __init__(self, url: str, timeout_s: float = 0.25, retry_after_s: float = 1.0,
                 prefix: str = "segment-stream:") -> None:
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=0, retry_on_timeout=False)
        self._retry_after_s = retry_after_s
        self._down_until = 0.0
        self._down = False
        self._prefix = prefix

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        if not self._down:
            logger.warning("Redis cache unavailable (%s); answering from the tables", exc)
        self._down = True
        self._down_until = time.monotonic() + self._retry_after_s

    def _recovered(self) -> None:
        if self._down:
            logger.warning("Redis cache is back")
        self._down = False

    async def get(self, key: str) -> bytes | None:
        if not self._available():
            return None
        try:
            value = await self._client.get(self._prefix + key)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._recovered()
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if ttl_s <= 0 or not self._available():
            return
        try:
            await self._client.set(self._prefix + key, value, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return
        self._recovered()

    async def close(self) -> None:
        await self._client.aclose()


def make_cache(redis_url: str | None) -> AnswerCache:
    return RedisCache(redis_url) if redis_url else InProcessCache()
