"""The in-process answer cache and the near copies are bounded in entries and in bytes, keys
included, whatever clients ask for."""

from __future__ import annotations

import asyncio
import time

from api.cache import InProcessCache, _Entries
from api.errors import RequestValidationError
from api.params import parse_internal_request


def test_entries_are_bounded_by_count_and_bytes() -> None:
    entries = _Entries(max_bytes=100_000, max_entries=50)
    later = time.monotonic() + 60
    for i in range(1000):
        entries.put(f"key-{i}", b"x" * 10, later)
    assert len(entries) == 50
    for i in range(1000):
        entries.put(f"k{'y' * 1000}-{i}", b"x" * 10, later)  # long keys count too
    assert entries.size <= 100_000
    assert entries.get(f"k{'y' * 1000}-999") == b"x" * 10
    assert entries.get("key-0") is None


def test_an_answer_over_a_sixteenth_of_the_budget_is_not_kept() -> None:
    entries = _Entries(max_bytes=16_000, max_entries=50)
    entries.put("big", b"x" * 1_000, time.monotonic() + 60)
    assert "big" not in entries and entries.size == 0


def test_expired_answers_are_dropped() -> None:
    entries = _Entries(max_bytes=100_000, max_entries=50)
    entries.put("k", b"v", time.monotonic() - 1)
    assert entries.get("k") is None and entries.size == 0


def test_in_process_cache_under_many_distinct_keys() -> None:
    async def run() -> InProcessCache:
        cache = InProcessCache(max_bytes=1 << 20, max_entries=1000)
        for i in range(20_000):
            await cache.set(f"program-{i}", b'{"items":[],"total":0}', 30)
        return cache
    cache = asyncio.run(run())
    assert len(cache._entries) <= 1000 and cache._entries.size <= 1 << 20


def test_internal_queries_are_validated_like_public_ones() -> None:
    for query, loc in [({"program_id": "p", "segment_type": "growth", "segment_basis": "label",
                         "min_weight": "nan"}, ["query", "min_weight"]),
                       ({"segment_type": "growth"}, ["query", "program_id"]),
                       ({"program_id": "p", "segment_type": "all"}, ["query", "segment_type"])]:
        try:
            parse_internal_request(query)
        except RequestValidationError as exc:
            assert [e["loc"] for e in exc.errors] == [loc]
        else:
            raise AssertionError(f"{query} accepted")
    q = parse_internal_request({"program_id": "p", "min_weight": "0.25",
                                "segment_basis": "asset"})
    assert (q.program_id, q.min_weight, q.segment_basis) == ("p", 0.25, "asset")
