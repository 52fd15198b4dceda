"""Answer cache for GET /segments: Redis when REDIS_URL is set, else in-process.

A cache never fails a request: when Redis is down or slow the caller gets a miss (and a write
is dropped), the outage is logged once, and Redis is tried again after a short back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streams.codec.exact import kept

logger = logging.getLogger(__name__)


class AnswerCache(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: float, keep_s: float = 0.0) -> None:
        """Cache ``value`` for ``ttl_s``; and keep it as the key's last answer for ``keep_s``
        (what `get_last` returns once the answer has expired)."""
    async def get_last(self, key: str) -> bytes | None: ...
    async def close(self) -> None: ...


class _Entries:
    """Answers with an expiry, bounded by count and by bytes (keys, values and a per-entry
    overhead); the least recently written go first."""

    OVERHEAD = 200  # bytes per entry besides its key and value: dict slot, tuple, objects

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._max_entries = max_entries

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    @property
    def size(self) -> int:
        """Bytes held, as counted against the bound."""
        return self._bytes

    def get(self, key: str) -> bytes | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            self.drop(key)
            return None
        return hit[1]

    def put(self, key: str, value: bytes, expires: float) -> None:
        self.drop(key)
        cost = self._cost(key, value)
        if cost > self._max_bytes // 16:
            return  # a huge answer: not worth a sixteenth of the budget
        # An exact-size copy: orjson's output holds a 4 KiB buffer however short the answer.
        self._data[key] = (expires, kept(value))
        self._bytes += cost
        while self._bytes > self._max_bytes or len(self._data) > self._max_entries:
            old, (_, dropped) = self._data.popitem(last=False)
            self._bytes -= self._cost(old, dropped)

    def drop(self, key: str) -> None:
        hit = self._data.pop(key, None)
        if hit is not None:
            self._bytes -= self._cost(key, hit[1])

    def clear(self) -> None:
        self._data.clear()
        self._bytes = 0

    def _cost(self, key: str, value: bytes) -> int:
        return len(key) + len(value) + self.OVERHEAD


class InProcessCache:
    """A small TTL cache in the worker's memory, bounded in entries and bytes."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024, max_entries: int = 10_000) -> None:
        self._entries = _Entries(max_bytes, max_entries)
        self._last = _Entries(max_bytes, max_entries)

    async def get(self, key: str) -> bytes | None:
        return self._entries.get(key)

    async def set(self, key: str, value: bytes, ttl_s: float, keep_s: float = 0.0) -> None:
        now = time.monotonic()
        if ttl_s > 0:
            self._entries.put(key, value, now + ttl_s)
        if keep_s > 0:
            self._last.put(key, value, now + keep_s)

    async def get_last(self, key: str) -> bytes | None:
        return self._last.get(key)

    async def close(self) -> None:
        self._entries.clear()
        self._last.clear()


class RedisCache:
    """Redis-backed cache with short timeouts and a back-off after a failure, and a near copy.

    Near copy: the answers this worker wrote are also kept in its memory (up to
    ``near_bytes``, oldest first out) until the same expiry as in Redis, and served from
    there: a hit then costs no Redis round trip (BENCHMARKS.md, API). Every write is
    announced on a Redis pub/sub channel, and each worker drops its copy of the keys others
    wrote, so a ``force_refresh`` on one worker reaches the copies of all (within the
    channel's delivery time). The copies are used only while this worker is subscribed: when
    the subscription breaks (Redis down), they are dropped and every answer goes to Redis (or
    to the tables) until it is back.
    """

    def __init__(self, url: str, timeout_s: float = 0.25, retry_after_s: float = 1.0,
                 prefix: str = "segment-stream:", near_bytes: int = 8 * 1024 * 1024,
                 near_entries: int = 10_000) -> None:
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=0, retry_on_timeout=False)
        # The subscription has a client (and connection pool) of its own.
        self._subscriber = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=0, retry_on_timeout=False)
        self._retry_after_s = retry_after_s
        self._down_until = 0.0
        self._down = False
        self._prefix = prefix
        self._last_prefix = prefix + "last:"  # (answer keys are JSON arrays: no clash)
        self._channel = prefix + "written"
        self._origin = uuid.uuid4().hex.encode()  # this cache's writes, on the channel
        self._near = _Entries(near_bytes, near_entries)
        self._near_live = False  # subscribed: the copies are kept coherent
        self._listener: asyncio.Task[None] | None = None

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

    # -- near copies ---------------------------------------------------------------------------
    def _start_listener(self) -> None:
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        """Keep the subscription to the write announcements (retried after a failure)."""
        while True:
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._near_live = True
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    origin, _, key = bytes(message["data"]).partition(b" ")
                    if origin != self._origin:
                        self._near.drop(key.decode(errors="replace"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down or restarted: copies may be stale now
                logger.debug("cache write announcements lost: %r", exc)
            finally:
                self._near_live = False
                self._near.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self._retry_after_s)

    # -- the cache -------------------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        self._start_listener()
        if self._near_live and not self._down:
            hit = self._near.get(key)
            if hit is not None:
                return hit
        return await self._get(self._prefix + key)

    async def set(self, key: str, value: bytes, ttl_s: float, keep_s: float = 0.0) -> None:
        self._start_listener()
        if not self._available() or (ttl_s <= 0 and keep_s <= 0):
            self._near.drop(key)
            return
        expires = time.monotonic() + ttl_s
        try:
            async with self._client.pipeline(transaction=False) as pipe:  # one round trip
                if ttl_s > 0:
                    pipe.set(self._prefix + key, value, px=max(1, int(ttl_s * 1000)))
                    pipe.publish(self._channel, self._origin + b" " + key.encode())
                if keep_s > 0:
                    pipe.set(self._last_prefix + key, value, px=max(1, int(keep_s * 1000)))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._near.drop(key)
            self._failed(exc)
            return
        self._recovered()
        if self._near_live and ttl_s > 0:
            self._near.put(key, value, expires)
        elif ttl_s <= 0:
            self._near.drop(key)

    async def get_last(self, key: str) -> bytes | None:
        return await self._get(self._last_prefix + key)

    async def _get(self, redis_key: str) -> bytes | None:
        """From Redis itself (None while it is down or backed off)."""
        if not self._available():
            return None
        try:
            value = await self._client.get(redis_key)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._recovered()
        return value if isinstance(value, bytes) else None

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        await self._subscriber.aclose()
        await self._client.aclose()


def make_cache(redis_url: str | None, namespace: str) -> AnswerCache:
    """The answer cache of deployment ``namespace`` (its app id: the prefix of its Redis keys
    and channel, so that deployments can share a Redis)."""
    return RedisCache(redis_url, prefix=f"{namespace}:") if redis_url else InProcessCache()
