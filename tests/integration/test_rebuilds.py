"""Background rebuilds (contract section 11, "Rebalances never stop the group"): while a worker
rebuilds a large share of the state, another worker joins, and the group does not wait for the
rebuild. Real `segments worker` processes, the session's broker.

w1 holds the state of every partition. w2 joins and gains about half of them, which it rebuilds
in the background, slowed by the test-only knob SEGMENTS_TEST_ONLY_REBUILD_SLICE_PAUSE_MS (a
pause after each slice of changelog records) so that a small state takes tens of seconds.
While w2 rebuilds, w3 joins: it owns partitions within seconds (the old callback rebuilt inside
the join, which then waited for w2's rebuild, up to the 60 s rebalance timeout, and w2 was
evicted and started over). Every read meanwhile is 200 and exact (from owners, standby copies,
or last answers, stale-flagged); no changelog record is read twice by w2's rebuilds (none
started over) and w2 went through no extra rebalance (not evicted); the final answers are exact
against the oracle."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streams.runtime.kafka_clients import start_consumer
from streams.runtime.rebuilds import SLICE
from streams.tools.produce import generate
from tests.support.harness import (
    Cluster,
    Worker,
    feed,
    final_check,
    get_json,
    wait_no_lag,
    wait_ready,
    walk_pages,
)
from tests.support.oracle import Oracle

pytestmark = pytest.mark.integration

EVENTS = 100_000
# After each slice, 0.35 ms a record it holds: w2's share takes tens of seconds, however many
# records a slice holds.
PAUSE_MS = 350 * SLICE // 1000
JOIN_BOUND_S = 20.0  # w3's start (a process start on a loaded machine) to its assignment
QUERY = ("p0", "growth", "label", 0.5)


def log(msg: str) -> None:
    print(f"[rebuilds] {msg}", flush=True)


async def metrics(session: aiohttp.ClientSession, worker: Worker) -> dict[str, float]:
    """Samples by name and labels, e.g. ``segments_rebuilds_total{event=started}``."""
    async with session.get(worker.url + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


async def health(session: aiohttp.ClientSession, worker: Worker) -> dict[str, Any]:
    try:
        _, body = await get_json(session, worker.url + "/healthz")
    except aiohttp.ClientError:
        return {}
    return body if isinstance(body, dict) else {}


async def changelog_ends(cluster: Cluster) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, **cluster.kafka)
    await start_consumer(consumer)
    try:
        tps = [TopicPartition(f"{cluster.app_id}-{table}-changelog", p)
               for table in ("recommendations", "emitted-counts")
               for p in range(cluster.partitions)]
        ends = await consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): end for tp, end in ends.items()}
    finally:
        await consumer.stop()


async def reader(workers: list[Worker], want: list[tuple[Any, ...]], stop: asyncio.Event,
                 statuses: Counter[str], wrong: list[str]) -> None:
    """Reads with consistency=any on every worker until stopped: each 200 must be exact (the
    input has stopped, so owners, copies and last answers all hold the same counts); counted
    per worker and status. (A 503 with Retry-After is what a worker answers when some
    partition is found nowhere and it has no last answer of the query: a joining worker.)"""
    program, segment_type, basis, m = QUERY
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while not stop.is_set():
            for w in workers:
                try:
                    ans = await walk_pages(session, w.url, program, segment_type, basis, m)
                except (aiohttp.ClientError, TimeoutError):
                    statuses[f"{w.port} unreachable"] += 1
                    continue
                statuses[f"{w.port} {ans.status}"] += 1
                if ans.status == 503 and ans.retry_after != "1":
                    wrong.append(f"{w.port}: 503 without Retry-After")
                if ans.status == 200 and sorted(ans.rows) != sorted(want):
                    wrong.append(f"{w.port}: {len(ans.rows)} rows, want {len(want)}")
            await asyncio.sleep(0.2)


async def test_a_worker_joins_while_another_rebuilds_without_waiting_for_it(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    started = time.monotonic()
    records = list(generate(EVENTS, seed=2301, programs=2, users=20_000, labels=300,
                            assets=600))
    oracle = Oracle()
    oracle.feed(records)
    want = oracle.segments(*QUERY)
    cluster = Cluster(kafka_bootstrap, tmp_path, extra_env={
        "SEGMENTS_TEST_ONLY_REBUILD_SLICE_PAUSE_MS": str(PAUSE_MS)})
    w1 = cluster.add_worker()
    stop = asyncio.Event()
    statuses: Counter[str] = Counter()
    wrong: list[str] = []
    poller: asyncio.Task[None] | None = None
    try:
        await feed(cluster, [w1], records)
        fed_s = time.monotonic() - started
        ends = await changelog_ends(cluster)
        log(f"{len(records)} events ({len(oracle.recs)} recommendations), changelogs "
            f"{sum(ends.values())} records, fed in {fed_s:.1f}s")
        await wait_ready(w1)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            poller = asyncio.create_task(reader([w1], want, stop, statuses, wrong))
            # w2 joins and rebuilds its share in the background.
            w2 = cluster.add_worker()
            t2 = time.monotonic()
            while not (await health(session, w2)).get("rebuilding"):
                assert time.monotonic() - t2 < 60, f"w2 never rebuilt anything:\n{w2.log()}"
                await asyncio.sleep(0.2)
            w2_rebuilding = (await health(session, w2))["rebuilding"]
            w2_join_s = time.monotonic() - t2  # (the same measure with no rebuild under way)
            log(f"w2 assigned {w2_join_s:.1f}s after its start, rebuilding {w2_rebuilding}")
            poller.cancel()
            poller = asyncio.create_task(reader([w1, w2], want, stop, statuses, wrong))
            before = await metrics(session, w2)
            # w3 joins while w2 rebuilds: the group's rebalance does not wait for w2.
            w3 = cluster.add_worker()
            t3 = time.monotonic()
            while True:
                h3 = await health(session, w3)
                if h3.get("partitions") or h3.get("rebuilding"):
                    break
                assert time.monotonic() - t3 < 90, f"w3 got no partition:\n{w3.log()}"
                await asyncio.sleep(0.1)
            join_s = time.monotonic() - t3
            h2 = await health(session, w2)
            log(f"w3 owns {h3.get('partitions')} + rebuilding {h3.get('rebuilding')} "
                f"{join_s:.1f}s after its start; w2 then serves {h2.get('partitions')}, "
                f"rebuilding {h2.get('rebuilding')}")
            assert h2.get("rebuilding"), "w2's rebuild ended before w3 joined: not the point"
            assert join_s < JOIN_BOUND_S, f"w3 waited {join_s:.1f}s for its partitions"
            poller.cancel()
            poller = asyncio.create_task(reader([w1, w2, w3], want, stop, statuses, wrong))
            t_all = time.monotonic()
            for w in (w1, w2, w3):
                await wait_ready(w, timeout_s=240)
            rebuilt_s = time.monotonic() - t_all
            stop.set()
            await poller
            poller = None
            after = await metrics(session, w2)
            m1 = await metrics(session, w1)
        log(f"all rebuilt {rebuilt_s:.1f}s after w3's assignment; reads {dict(statuses)}; "
            f"w2 rebuilds {({k: v for k, v in after.items() if 'rebuild' in k})}; "
            f"rebalances w1 {m1.get('segments_rebalances_total')}, "
            f"w2 {after.get('segments_rebalances_total')}")
        assert not wrong, wrong[:5]
        # The worker that held everything answers throughout, exactly.
        assert statuses[f"{w1.port} 200"] > 0
        assert {k for k in statuses if k.startswith(f"{w1.port} ")} == {f"{w1.port} 200"}, (
            f"reads on w1 that were not 200: {dict(statuses)}")
        assert all(k.endswith((" 200", " 503")) for k in statuses), dict(statuses)
        # w2's rebuilds went on through w3's join (continued), never started over: nothing
        # of a changelog partition was read twice.
        assert after["segments_rebuilds_total{event=continued}"] >= 1
        read = after["segments_rebuild_records_total"]
        share = sum(end for (_, p), end in ends.items() if p in w2_rebuilding)
        assert read <= share, f"w2 read {read} changelog records of partitions {w2_rebuilding} " \
                              f"holding {share}"
        started_n = after["segments_rebuilds_total{event=started}"]
        assert started_n == before["segments_rebuilds_total{event=started}"], (
            "w2 started a rebuild again after w3 joined")
        # w2 was not evicted: it went through its own join and w3's, nothing more.
        assert after["segments_rebalances_total"] == 2, after["segments_rebalances_total"]
        assert "no longer knew this worker" not in w2.log_path.read_text(errors="replace")
        await wait_no_lag(cluster)
        # (three thresholds, the watched one included, to keep the wall time small)
        report = await final_check(cluster, oracle, [w1, w2, w3], thresholds=(0.0, 0.731))
        log(f"final check {report}; wall {time.monotonic() - started:.1f}s")
    finally:
        stop.set()
        if poller is not None:
            poller.cancel()
        cluster.stop_all()
