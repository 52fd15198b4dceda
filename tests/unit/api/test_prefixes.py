"""Whole sorted prefixes (api/prefixes.py) through the real app on one in-memory worker: every
page equals the same page of the full sorted list, with the full total; a page inside a cached
prefix costs no computation; ``force_refresh`` always computes, exactly ``page x size`` rows;
identical misses at once cost one computation, counted by the metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from api.app import create_web_app
from api.prefixes import pack_prefix, prefix_limit, unpack_prefix
from api.views import Answer
from streams.domain.rows import Held, SegmentRow, contract_order, top

ROWS = 437


def rows() -> list[SegmentRow]:
    return [SegmentRow("growth", "label", f"b{n:03d}", "view", "n", n % 13 + 1, 0.75)
            for n in range(ROWS)]


class OneWorker:
    """A worker owning every partition; it records the limits it was asked for."""

    self_url = "http://a"
    total_partitions = 2
    cache_ttl_s = 30.0

    def __init__(self) -> None:
        self.rows = rows()
        self.limits: list[int | None] = []
        self.gate: asyncio.Event | None = None
        self.serving = True

    def is_ready(self) -> bool:
        return self.serving

    def local_top(self, *query: Any) -> tuple[list[SegmentRow], int, list[int]]:
        limit = query[4]
        self.limits.append(limit)
        return top(self.rows, limit), len(self.rows), [0, 1]

    def local_query(self, *query: Any) -> tuple[list[SegmentRow], list[int]]:
        return contract_order(list(self.rows)), [0, 1]

    def partitions(self) -> list[int]:
        return [0, 1]

    def owners(self) -> dict[str, list[int]]:
        return {self.self_url: [0, 1]}

    def recommendations(self) -> int:
        return 0

    def lag(self, partitions: list[int] | None = None) -> int:
        return 3

    async def held_query(self, *query: Any) -> Held:
        assert not self.serving
        return Held([], [], 0, False)  # its partitions moved; nobody has them yet

    async def input_ends(self, fresh: bool = False) -> int | None:
        if self.gate is not None:
            await self.gate.wait()
        return 100

    def standbys(self) -> list[int]:
        return []

    def standby_holders(self) -> dict[int, list[str]]:
        return {}


def sample(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name)
    return 0.0 if value is None else value


def test_prefix_limit_and_its_cache_entry() -> None:
    assert prefix_limit(1, 100) == 200 and prefix_limit(50, 100) == 6_000
    assert prefix_limit(3, 7) == 42
    answer = Answer(rows()[:5], 1_000, 7, False, ROWS)
    served = unpack_prefix(pack_prefix(answer, 42))
    assert served is not None and served.cached and served.ends == 42
    assert served.answer == answer
    assert unpack_prefix(pack_prefix(answer, None)).ends is None  # type: ignore[union-attr]
    assert unpack_prefix(b"1000 7 -1\n[]") is None  # a page entry, not a prefix
    assert unpack_prefix(b"1 2 3 1\n[[1]]") is None


async def test_pages_from_prefixes_equal_the_sorted_list() -> None:
    worker = OneWorker()
    registry = CollectorRegistry()
    client = TestClient(TestServer(create_web_app(worker, None, registry=registry)))
    await client.start_server()
    every = contract_order(rows())
    try:
        async def page(page: int, size: int, refresh: bool = False,
                       min_weight: float = 0.5) -> dict[str, Any]:
            resp = await client.get("/segments", headers={"program-id": "p"}, params={
                "page": str(page), "size": str(size), "force_refresh": str(refresh),
                "min_weight": str(min_weight)})
            assert resp.status == 200 and resp.headers["Segments-Lag"] == "3"
            body: dict[str, Any] = await resp.json()
            return body

        def expected(page: int, size: int) -> list[str]:
            return [r.segment_basis_id for r in every[(page - 1) * size:page * size]]

        for p, size in [(1, 100), (2, 100), (1, 37), (5, 40), (2, 7), (3, 100)]:
            body = await page(p, size)
            assert [i["segment_basis_id"] for i in body["items"]] == expected(p, size)
            assert body["total"] == ROWS
        # page 1 of 100 computed 200 rows: pages 2 of 100, 1 of 37, 5 of 40, 2 of 7 were hits;
        # page 3 of 100 needed 300 rows, and computed 600 (all 437).
        assert worker.limits == [200, 600]
        assert sample(registry, "segments_query_computations_total") == 2
        past = await page(40, 100)
        assert past["items"] == [] and past["total"] == ROWS
        assert len(worker.limits) == 2  # past the end of a complete prefix: a hit
        fresh = await page(4, 100, refresh=True)
        assert [i["segment_basis_id"] for i in fresh["items"]] == expected(4, 100)
        assert worker.limits[-1] == 400  # force_refresh: exactly its page x size
        # ... and its 400 rows replace the prefix: page 5 is computed again.
        last = await page(5, 100)
        assert [i["segment_basis_id"] for i in last["items"]] == expected(5, 100)
        assert len(last["items"]) == ROWS - 400 and worker.limits[-1] == 1_000

        # Sixteen identical misses at once: one computation, fifteen coalesced.
        computed = sample(registry, "segments_query_computations_total")
        worker.gate = asyncio.Event()
        requests = [asyncio.ensure_future(page(1, 50, min_weight=0.6)) for _ in range(16)]
        await asyncio.sleep(0.2)
        worker.gate.set()
        bodies = await asyncio.gather(*requests)
        assert all(b == bodies[0] for b in bodies) and bodies[0]["total"] == ROWS
        assert sample(registry, "segments_query_computations_total") - computed == 1
        assert sample(registry, "segments_query_coalesced_total") == 15
        # Sixteen force_refresh at once: the first computes alone (the others came after it
        # started: it may not hold what they must reflect); the 15 share the next one.
        worker.gate = asyncio.Event()
        requests = [asyncio.ensure_future(page(1, 50, refresh=True)) for _ in range(16)]
        await asyncio.sleep(0.2)
        worker.gate.set()
        bodies = await asyncio.gather(*requests)
        assert all(b == bodies[0] for b in bodies)
        assert sample(registry, "segments_query_computations_total") - computed == 3
        assert sample(registry, "segments_query_coalesced_total") == 15 + 14
    finally:
        await client.close()


async def test_a_page_far_past_the_end_is_empty_fresh_or_not() -> None:
    worker = OneWorker()
    client = TestClient(TestServer(create_web_app(worker, None)))
    await client.start_server()
    try:
        for refresh in ("true", "false"):
            resp = await client.get("/segments", headers={"program-id": "p"}, params={
                "page": str(10**30), "size": "100", "force_refresh": refresh})
            assert resp.status == 200
            assert await resp.json() == {"items": [], "total": ROWS, "page": 10**30,
                                         "size": 100}
        assert worker.limits == [None]  # every row, computed once; then the cached prefix
    finally:
        await client.close()


async def test_a_page_served_from_a_prefix_is_kept_as_its_last_answer() -> None:
    worker = OneWorker()
    client = TestClient(TestServer(create_web_app(worker, None)))
    await client.start_server()
    try:
        headers = {"program-id": "p"}
        await client.get("/segments", headers=headers, params={"size": "100"})
        second = await client.get("/segments", headers=headers,
                                  params={"size": "100", "page": "2"})
        assert second.status == 200 and worker.limits == [200]  # from the prefix
        worker.serving = False
        again = await client.get("/segments", headers=headers, params={
            "size": "100", "page": "2", "force_refresh": "true"})
        assert again.status == 200 and again.headers["Segments-Stale"] == "true"
        assert await again.read() == await second.read()
        assert again.headers["Segments-As-Of"] == second.headers["Segments-As-Of"]
    finally:
        await client.close()


async def test_the_internal_answer_adds_total_only_when_asked_with_a_limit() -> None:
    """An older worker asks with no limit and its decoder refuses unknown fields: it gets the
    answer it knows; a newer one asks with ``limit`` and gets the first rows and the total."""
    worker = OneWorker()
    client = TestClient(TestServer(create_web_app(worker, None)))
    await client.start_server()
    try:
        params = {"program_id": "p", "min_weight": "0.5"}
        old = await client.get("/internal/segments", params=params)
        body = await old.json()
        assert set(body) == {"items", "partitions", "lag"} and len(body["items"]) == ROWS
        assert "Segments-Limit" not in old.headers
        new = await client.get("/internal/segments", params={**params, "limit": "3"})
        body = await new.json()
        assert set(body) == {"items", "partitions", "lag", "total"}
        assert body["total"] == ROWS and new.headers["Segments-Limit"] == "3"
        want = [r.segment_basis_id for r in contract_order(rows())[:3]]
        assert [i[2] for i in body["items"]] == want
        for bad in ("0", "-1", "x", str(1 << 62 + 1), "1" * 30):
            resp = await client.get("/internal/segments", params={**params, "limit": bad})
            assert resp.status == 422, bad
    finally:
        await client.close()


async def test_a_read_past_half_the_ttl_recomputes_in_the_background() -> None:
    """Refresh-ahead: the reader is served the cached answer at once; the prefix is computed
    again behind it (once), and the next reader gets the new one; nothing older than the TTL
    is ever served."""
    worker = OneWorker()
    worker.cache_ttl_s = 1.0
    registry = CollectorRegistry()
    client = TestClient(TestServer(create_web_app(worker, None, registry=registry)))
    await client.start_server()
    try:
        async def get(page: int, size: int = 100) -> tuple[int, dict[str, Any]]:
            resp = await client.get("/segments", headers={"program-id": "p"},
                                    params={"page": str(page), "size": str(size)})
            assert resp.status == 200
            return int(resp.headers["Segments-As-Of"]), await resp.json()

        first, body = await get(1)
        assert worker.limits == [200]
        await asyncio.sleep(0.6)  # past half the TTL: still cached
        worker.gate = asyncio.Event()  # (the background computation waits here)
        again, same = await get(1)
        assert (again, same) == (first, body) and worker.limits == [200]
        await get(2)  # (another read of the same prefix: no second refresh)
        worker.gate.set()
        for _ in range(50):
            await asyncio.sleep(0.02)
            if len(worker.limits) > 1:
                break
        assert worker.limits == [200, 200]
        newer, fresh = await get(3, 50)  # a page not cached yet: from the new prefix
        assert newer > first and fresh["items"] and fresh["total"] == ROWS
        assert sample(registry, "segments_query_computations_total") == 2
    finally:
        await client.close()


async def test_a_refresh_ahead_keeps_the_length_of_the_prefix() -> None:
    """Page 1 read past half the TTL refreshes the prefix that page 3 needed, not page 1's."""
    worker = OneWorker()
    worker.cache_ttl_s = 1.0
    client = TestClient(TestServer(create_web_app(worker, None)))
    await client.start_server()
    try:
        for page in (1, 3):
            resp = await client.get("/segments", headers={"program-id": "p"},
                                    params={"page": str(page), "size": "100"})
            assert resp.status == 200
        assert worker.limits == [200, 600]
        await asyncio.sleep(0.6)
        resp = await client.get("/segments", headers={"program-id": "p"},
                                params={"page": "1", "size": "100"})
        assert resp.status == 200
        for _ in range(50):
            await asyncio.sleep(0.02)
            if len(worker.limits) > 2:
                break
        assert worker.limits == [200, 600, 600]
    finally:
        await client.close()
