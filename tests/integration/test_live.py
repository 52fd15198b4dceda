"""Live monitoring against real workers, the real broker and a real browser (contract sections
7-9): the stream of a query's top segments equals GET /segments at every checkpoint, under load
and across a rebalance; many clients, a slow one and the limit on streams; /metrics parsed with
prometheus-client, its lag true against a known backlog; the live page in Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from streams.tools.produce import Record, generate
from tests.support.harness import (
    Cluster,
    Worker,
    feed,
    get_json,
    produce_records,
    rss,
    wait_no_lag,
    wait_ready,
    walk_pages,
)
from tests.support.monitoring import dashboard_metrics
from tests.support.oracle import Oracle

pytestmark = pytest.mark.integration

MB = 1 << 20
PROGRAM = "program-0"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def log(msg: str) -> None:
    print(f"[live {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def now_records(n: int, seed: int, **kwargs: Any) -> list[Record]:
    """Records whose timestamps end now (the freshness histogram measures from them)."""
    return list(generate(n, seed=seed, base_ts=int(time.time() * 1000) - n * 10, **kwargs))


class StreamClient:
    """A client of GET /segments/stream that applies the snapshot and every update, as the
    contract says a client does."""

    def __init__(self, session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> None:
        self.session = session
        self.url = url
        self.params = params
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.total = 0
        self.as_of = 0
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.comments = 0
        self.updated = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.status = 0

    def ordered(self) -> list[dict[str, Any]]:
        rows = sorted(self.rows.values(), key=lambda r: (-r["user_count"], r["segment_basis_id"],
                                                         r["action_type"], r["name"]))
        return rows[:int(self.params.get("size", "50"))]

    def apply(self, name: str, data: dict[str, Any]) -> None:
        self.events.append((name, data))
        if name == "snapshot":
            self.rows = {(r["segment_basis_id"], r["action_type"]): r for r in data["items"]}
        else:
            for basis_id, action in data["removed"]:
                self.rows.pop((basis_id, action), None)
            for r in data["upserts"]:
                self.rows[(r["segment_basis_id"], r["action_type"])] = r
            assert len(self.rows) <= int(self.params.get("size", "50"))
        self.total = data["total"]
        self.as_of = data["as_of"]
        self.updated.set()

    async def run(self) -> None:
        async with self.session.get(self.url + "/segments/stream", params=self.params) as resp:
            self.status = resp.status
            if resp.status != 200:
                return
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            name, data = "", ""
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    self.comments += 1
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data:
                    self.apply(name, json.loads(data))
                    name, data = "", ""

    def start(self) -> StreamClient:
        self.task = asyncio.create_task(self.run())
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await self.task

    async def next_update_after(self, as_of_ms: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.as_of <= as_of_ms:
            assert time.monotonic() < deadline, f"no update after {as_of_ms}: {self.events[-2:]}"
            self.updated.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.updated.wait(), 1.0)


def as_rows(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(i["segment_basis_id"], i["action_type"], i["name"], i["user_count"],
             round(i["strength"], 12)) for i in items]


async def metrics(session: aiohttp.ClientSession, worker: Worker) -> dict[str, list[Any]]:
    async with session.get(worker.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = family.samples
    return out


def value(samples: list[Any], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
def cluster(kafka_bootstrap: str, tmp_path: Path) -> Cluster:
    return Cluster(kafka_bootstrap, tmp_path, extra_env={"SEGMENTS_STREAM_INTERVAL_MS": "300"})


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[Cluster]:
    """One worker with data (``workers[0]``), shared by the tests that only read or add an event
    of their own: none counts what another added."""
    cluster = Cluster(kafka_bootstrap, tmp_path_factory.mktemp("live"),
                      extra_env={"SEGMENTS_STREAM_INTERVAL_MS": "300"})
    worker = cluster.add_worker()
    try:
        await feed(cluster, [worker], now_records(5_000, seed=2001, programs=2, users=800,
                                                  labels=40))
        yield cluster
    finally:
        cluster.stop_all()


# -- the stream --------------------------------------------------------------------------------
async def test_the_stream_equals_get_segments_under_load_and_across_a_rebalance(
        cluster: Cluster) -> None:
    first = cluster.add_worker()
    workers = [first]
    oracle = Oracle()
    params = {"program_id": PROGRAM, "segment_type": "growth", "segment_basis": "labels",
              "min_weight": "0.5", "size": "20"}
    checkpoints = 0
    try:
        await wait_ready(first)
        records = now_records(4_000, seed=1701, programs=2, users=600, labels=60)
        oracle.feed(records)
        await produce_records(cluster.bootstrap, cluster.input_topic, records)
        async with aiohttp.ClientSession() as session:
            stream = StreamClient(session, first.url, params).start()
            await stream.next_update_after(0)
            assert stream.events[0][0] == "snapshot"
            for burst in range(6):
                if burst == 3:  # a second worker joins: the partitions move under the stream
                    second = cluster.add_worker()
                    workers.append(second)
                    await wait_ready(second)
                    for w in workers:
                        await wait_ready(w)
                records = now_records(1_500, seed=1710 + burst, programs=2, users=600, labels=60)
                oracle.feed(records)
                producing = asyncio.create_task(
                    produce_records(cluster.bootstrap, cluster.input_topic, records))
                while not producing.done():  # under load: always a valid, ordered top list
                    await asyncio.sleep(0.3)
                    rows = stream.ordered()
                    assert all(r["user_count"] > 0 for r in rows)
                await producing
                await wait_no_lag(cluster)
                settled = int(time.time() * 1000)
                await stream.next_update_after(settled)
                # The answer the stream's client holds is GET /segments' page 1 ...
                status, page = await get_json(
                    session, first.url + "/segments", headers={"program-id": PROGRAM},
                    params={"min_weight": "0.5", "size": "20", "force_refresh": "true"})
                assert status == 200, page
                want = oracle.segments(PROGRAM, "growth", "label", 0.5)
                got = [(r["segment_basis_id"], r["action_type"], r["name"], r["user_count"])
                       for r in stream.ordered()]
                assert got == [(w[2], w[3], w[4], w[5]) for w in want[:20]], f"burst {burst}"
                assert got == [(i["segment_basis_id"], i["action_type"], i["name"],
                                i["user_count"]) for i in page["items"]]
                assert stream.total == len(want)
                checkpoints += 1
            updates = sum(1 for name, _ in stream.events if name == "update")
            await stream.stop()
        log(f"stream: {checkpoints} checkpoints equal GET /segments and the oracle, "
            f"{updates} updates, across a rebalance")
        assert updates >= checkpoints
    finally:
        cluster.stop_all()


async def test_invalid_streams_are_422_before_it_starts(served: Cluster) -> None:
    worker = served.workers[0]
    async with aiohttp.ClientSession() as session:
        for params, loc in [({"min_weight": "2"}, ["query", "min_weight"]),
                            ({"program_id": PROGRAM, "size": "1001"}, ["query", "size"]),
                            ({"program_id": PROGRAM, "segment_type": "x"},
                             ["query", "segment_type"])]:
            status, body = await get_json(session, worker.url + "/segments/stream",
                                          params=params)
            assert status == 422, body
            assert loc in [e["loc"] for e in body["detail"]]
        status, body = await get_json(session, worker.url + "/segments/stream", params={})
        assert status == 422 and body["detail"][0]["loc"] == ["header", "program-id"]


STREAM_CLIENTS = 200


async def test_many_clients_a_slow_one_and_the_limit(kafka_bootstrap: str,
                                                    tmp_path: Path) -> None:
    cluster = Cluster(kafka_bootstrap, tmp_path, extra_env={
        "SEGMENTS_STREAM_INTERVAL_MS": "200",
        "SEGMENTS_STREAM_MAX_CLIENTS": str(STREAM_CLIENTS + 1)})
    worker = cluster.add_worker()
    slow: socket.socket | None = None
    try:
        await wait_ready(worker)
        await produce_records(kafka_bootstrap, cluster.input_topic,
                              now_records(3_000, seed=1801, programs=1, users=500, labels=80))
        await wait_no_lag(cluster)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            params = {"program_id": PROGRAM, "min_weight": "0.3", "size": "1000"}
            clients = [StreamClient(session, worker.url, params).start()
                       for _ in range(STREAM_CLIENTS)]
            deadline = time.monotonic() + 60
            while not all(c.events for c in clients):
                assert time.monotonic() < deadline, "not every client got its snapshot"
                await asyncio.sleep(0.2)
            m = await metrics(session, worker)
            assert value(m["segments_stream_clients"], "segments_stream_clients") == (
                STREAM_CLIENTS)
            # A client that reads nothing: its updates pile up, then it is cut off.
            slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
            slow.connect(("127.0.0.1", worker.port))
            slow.sendall(f"GET /segments/stream?program_id={PROGRAM}&min_weight=0.3&size=1000 "
                         f"HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await asyncio.sleep(1.0)
            # One more than the limit: 503.
            status, _ = await get_json(session, worker.url + "/segments/stream",
                                       params=params, timeout=aiohttp.ClientTimeout(total=5))
            assert status == 503
            before = rss(worker)
            open_streams = float(STREAM_CLIENTS + 1)
            deadline = time.monotonic() + 90
            round_ = 0
            while open_streams > STREAM_CLIENTS:  # the load moves the answer: large updates
                assert time.monotonic() < deadline, "the slow client is still served"
                await produce_records(kafka_bootstrap, cluster.input_topic, now_records(
                    2_000, seed=1810 + round_, programs=1, users=2_000, labels=200))
                round_ += 1
                await asyncio.sleep(0.3)
                m = await metrics(session, worker)
                open_streams = value(m["segments_stream_clients"], "segments_stream_clients")
            await wait_no_lag(cluster)
            settled = int(time.time() * 1000)
            for c in clients:
                await c.next_update_after(settled)
            ans = await walk_pages(session, worker.url, PROGRAM, "growth", "label", 0.3,
                                   size=100)
            want = [(r[2], r[3], r[4], r[5]) for r in ans.rows]
            for c in clients:
                assert [(r["segment_basis_id"], r["action_type"], r["name"], r["user_count"])
                        for r in c.ordered()] == want
            m = await metrics(session, worker)
            open_streams = value(m["segments_stream_clients"], "segments_stream_clients")
            after = rss(worker)
            for c in clients:
                await c.stop()
        log(f"{STREAM_CLIENTS} stream clients equal GET /segments; the slow client was cut "
            f"off after {round_} rounds of load ({open_streams:.0f} open); RSS "
            f"{before // MB} -> {after // MB} MB")
        assert open_streams == STREAM_CLIENTS, "the slow client is still served"
        assert after - before < 100 * MB
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        if slow is not None:
            slow.close()
        cluster.stop_all()


# -- metrics -----------------------------------------------------------------------------------
CONTRACT_METRICS = (
    "segments_events", "segments_consumer_lag_records", "segments_event_freshness_seconds",
    "segments_http_request_duration_seconds", "segments_cache_requests",
    "segments_recommendations", "segments_segments", "segments_programs",
    "segments_change_events", "segments_rebalances", "segments_partitions_assigned",
    "segments_stream_clients", "process_resident_memory_bytes", "process_cpu_seconds",
)
BACKLOG = 60_000


async def test_metrics_are_true_against_a_known_backlog(cluster: Cluster) -> None:
    worker = cluster.add_worker()
    try:
        await wait_ready(worker)
        warm = now_records(2_000, seed=1901, invalid_ratio=0.05)
        await produce_records(cluster.bootstrap, cluster.input_topic, warm)
        await wait_no_lag(cluster)
        async with aiohttp.ClientSession() as session:
            await session.get(worker.url + "/segments", headers={"program-id": PROGRAM})
            m = await metrics(session, worker)
            for name in CONTRACT_METRICS:
                assert name in m, f"/metrics lacks {name}"
            assert dashboard_metrics() <= set(m), "the dashboard names a metric not exposed"
            handled = value(m["segments_events"], "segments_events_total")
            assert handled == len(warm)
            assert value(m["segments_events"], "segments_events_total", outcome="invalid") == (
                sum(1 for r in warm if not r.valid))
            # A known backlog: produced while the worker is stopped.
            assert worker.proc is not None
            os.kill(worker.proc.pid, signal.SIGSTOP)
            backlog = now_records(BACKLOG, seed=1902)
            await produce_records(cluster.bootstrap, cluster.input_topic, backlog)
            os.kill(worker.proc.pid, signal.SIGCONT)
            produced = len(warm) + BACKLOG
            seen: list[tuple[float, float]] = []
            deadline = time.monotonic() + 120
            while True:
                m = await metrics(session, worker)
                handled = value(m["segments_events"], "segments_events_total")
                lag = value(m["segments_consumer_lag_records"], "segments_consumer_lag_records",
                            topic=cluster.input_topic)
                seen.append((handled, lag))
                # Every record is handled or behind, never both and never neither, once the
                # worker has fetched since it was stopped.
                assert handled + lag <= produced
                if lag == 0 and handled == produced:
                    break
                assert time.monotonic() < deadline, seen[-5:]
                await asyncio.sleep(0.05)
            # Until its first fetch after SIGCONT the worker still shows what it knew before the
            # stop (however long a loaded machine makes that): judged from the first change on.
            before = (float(len(warm)), 0.0)
            since = list(itertools.dropwhile(lambda s: s == before, seen))
            exact = [s for s in since if s[0] + s[1] == produced]
            behind = [s for s in since if s[1] > 0]
            assert behind and max(s[1] for s in behind) >= BACKLOG // 2, seen[:5]
            assert len(exact) >= len(since) - 2, since[:5]
            hist = m["segments_event_freshness_seconds"]
            count = value(hist, "segments_event_freshness_seconds_count")
            applied = value(m["segments_events"], "segments_events_total", outcome="applied")
            assert count == applied
            assert value(m["segments_partitions_assigned"], "segments_partitions_assigned",
                         role="active") == cluster.partitions
            assert value(m["segments_recommendations"], "segments_recommendations") > 0
            assert value(m["segments_cache_requests"], "segments_cache_requests_total") >= 1
            routes = {s.labels["route"] for s in m["segments_http_request_duration_seconds"]
                      if "route" in s.labels}
            assert "/segments" in routes and "/metrics" in routes
        log(f"metrics: {len(seen)} scrapes while draining a backlog of {BACKLOG}; "
            f"handled + lag == produced in {len(exact)}, peak lag {max(s[1] for s in seen):.0f}")
    finally:
        cluster.stop_all()


# -- the live page in a real browser ------------------------------------------------------------
@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if CHROMIUM is None:
        pytest.fail("Chromium is not installed: scripts/setup.sh installs Debian's chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


async def page_rows(page: Any) -> list[tuple[str, str, int, str]]:
    return await page.eval_on_selector_all("#rows tr", """rows => rows.map(r => [
        r.dataset.key.split('\\u0000')[0], r.querySelector('.action').textContent,
        Number(r.querySelector('.users').textContent.replace(/,/g, '')),
        r.querySelector('.strength').textContent])""")


async def test_the_live_page_in_a_real_browser(served: Cluster, browser: Any,
                                                tmp_path: Path) -> None:
    worker = served.workers[0]
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        query = "program_id=program-0&segment_type=base&segment_basis=labels&min_weight=0.4&size=10"
        await page.goto(f"{worker.url}/?{query}")
        await page.wait_for_selector("#rows tr")
        assert await page.input_value("#program") == PROGRAM
        assert await page.input_value("#segment_type") == "base"
        async with aiohttp.ClientSession() as session:
            status, body = await get_json(session, worker.url + "/segments", headers={
                "program-id": PROGRAM}, params={"segment_type": "base", "min_weight": "0.4",
                                                "size": "10", "force_refresh": "true"})
        assert status == 200
        want = [(i["segment_basis_id"], i["action_type"], i["user_count"],
                 f"{i['strength']:.3f}") for i in body["items"]]
        assert [tuple(r) for r in await page_rows(page)] == want
        assert "live" in await page.inner_text("#freshness-text")
        # One event moves the top segment's count: the page shows it within 3 s.
        top = body["items"][0]
        event = {"program_id": PROGRAM, "user_id": "browser-test-user", "segment_basis": "label",
                 "basis_id": top["segment_basis_id"], "action_type": top["action_type"],
                 "name": top["name"], "weight": 0.99, "in_history": True,
                 "ts": int(time.time() * 1000)}
        from streams.codec.keys import family_key
        key = family_key((PROGRAM, "label", top["segment_basis_id"], top["action_type"]))
        started = time.monotonic()
        await produce_records(served.bootstrap, served.input_topic, [
            Record(key, json.dumps(event).encode(), event["ts"], True)])
        await page.wait_for_function(
            """([id, action, count]) => [...document.querySelectorAll('#rows tr')].some(r =>
                r.dataset.key === id + '\\u0000' + action &&
                Number(r.querySelector('.users').textContent.replace(/,/g, '')) === count)""",
            arg=[top["segment_basis_id"], top["action_type"], top["user_count"] + 1],
            timeout=3_000)
        shown_after = time.monotonic() - started
        # The view is in the URL: another type, picked, is kept there.
        await page.select_option("#segment_type", "discovery")
        await page.wait_for_function("location.search.includes('segment_type=discovery')")
        await page.screenshot(path=str(tmp_path / "live-page.png"))
        assert not errors, errors
        log(f"live page: rows equal GET /segments; a produced event shown after "
            f"{shown_after:.2f}s")
    finally:
        await page.close()
