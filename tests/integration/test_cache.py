"""The Redis answer cache and its near copies (api/cache.py) against a real Redis: copies
served without a round trip, dropped when another worker writes the same key, expired with
the Redis entry, never used while the subscription is broken, bounded in bytes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from api.cache import RedisCache
from streams.tools.redis_local import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis").start()
    try:
        yield srv
    finally:
        srv.stop()


async def _until(check, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _live(*caches: RedisCache) -> None:
    for cache in caches:
        await cache.get("warm-up")  # starts the subscription
    await _until(lambda: all(c._near_live for c in caches))


async def test_a_written_answer_is_served_from_the_near_copy(server: RedisServer) -> None:
    cache = RedisCache(server.url)
    try:
        await _live(cache)
        await cache.set("k", b"answer", 30)
        redis.Redis.from_url(server.url).delete("segment-stream:k")  # behind its back
        assert await cache.get("k") == b"answer", "served without asking Redis"
    finally:
        await cache.close()


async def test_another_workers_write_replaces_the_copy(server: RedisServer) -> None:
    a, b = RedisCache(server.url), RedisCache(server.url)
    try:
        await _live(a, b)
        await a.set("k", b"old", 30)
        assert await a.get("k") == b"old"
        await b.set("k", b"refreshed", 30)  # e.g. a force_refresh answered by b
        assert await b.get("k") == b"refreshed"
        got: list[bytes | None] = []

        async def poll() -> None:
            got.append(await a.get("k"))

        deadline = time.monotonic() + 5
        while not got or got[-1] != b"refreshed":
            assert time.monotonic() < deadline, f"a still answers {got[-1]!r}"
            await poll()
            await asyncio.sleep(0.005)
    finally:
        await a.close()
        await b.close()


async def test_copies_expire_with_the_entry(server: RedisServer) -> None:
    cache = RedisCache(server.url)
    try:
        await _live(cache)
        await cache.set("k", b"answer", 0.2)
        assert await cache.get("k") == b"answer"
        await asyncio.sleep(0.35)
        assert await cache.get("k") is None
    finally:
        await cache.close()


async def test_no_copy_is_used_while_redis_is_down(server: RedisServer) -> None:
    cache = RedisCache(server.url, retry_after_s=0.2)
    try:
        await _live(cache)
        await cache.set("k", b"answer", 30)
        server.stop()
        # Another worker could write meanwhile without this one hearing of it: no copies.
        await _until(lambda: not cache._near_live)
        assert await cache.get("k") is None
        server.start()
        await _until(lambda: cache._near_live)
        deadline = time.monotonic() + 5
        while await cache.get("k") != b"again":  # the first writes may meet stale connections
            assert time.monotonic() < deadline, "cache writes did not resume"
            await cache.set("k", b"again", 30)
            await asyncio.sleep(0.05)
        assert "k" in cache._near
    finally:
        await cache.close()


async def test_copies_are_bounded_in_bytes(server: RedisServer) -> None:
    cache = RedisCache(server.url, near_bytes=64 * 1024)
    try:
        await _live(cache)
        for k in range(100):
            await cache.set(f"k{k}", bytes(2000), 30)
        assert cache._near.size <= 64 * 1024
        assert len(cache._near) < 100
        assert await cache.get("k99") == bytes(2000)
        assert await cache.get("k0") == bytes(2000)  # from Redis: its copy went first
        await cache.set("huge", bytes(64 * 1024), 30)  # over a sixteenth: not copied
        assert "huge" not in cache._near
    finally:
        await cache.close()


@pytest.mark.parametrize("tls", [False, True], ids=["password", "password+tls"])
async def test_a_redis_with_a_password_and_tls_is_used_and_a_wrong_password_is_not(
        tmp_path: Path, tls: bool) -> None:
    srv = RedisServer(tmp_path / "secured", password="cache-pass-1", tls=tls).start()
    right, wrong = RedisCache(srv.url), RedisCache(srv.url.replace("cache-pass-1", "guess"))
    try:
        await _live(right)
        await right.set("k", b"answer", 30)
        assert redis.Redis.from_url(srv.url).get("segment-stream:k") == b"answer"
        assert await wrong.get("k") is None, "refused: a miss, answered from the tables"
        await wrong.set("k2", b"x", 30)  # refused too, and no error escapes
        assert redis.Redis.from_url(srv.url).get("segment-stream:k2") is None
    finally:
        await right.close()
        await wrong.close()
        srv.stop()
