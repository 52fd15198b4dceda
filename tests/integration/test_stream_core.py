"""Stream core on the real broker: exact counts against an independent oracle, the DLQ, change
events, and a restart that neither loses nor double counts."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from streams.tools.probes import partition_lags
from streams.tools.produce import generate
from tests.support.harness import (
    Cluster,
    get_json,
    produce_records,
    read_topic,
    wait_no_lag,
    wait_ready,
)
from tests.support.oracle import THRESHOLDS, TYPES, Oracle, assert_rows_equal

pytestmark = pytest.mark.integration

EVENTS = 50_000


async def local_rows(session: aiohttp.ClientSession, url: str, program: str, segment_type: str,
                     basis: str, m: float) -> list[Any]:
    status, body = await get_json(session, url + "/internal/segments", params={
        "program_id": program, "segment_type": segment_type, "segment_basis": basis,
        "min_weight": repr(m)})
    assert status == 200, body
    rows: list[Any] = body["items"]
    rows.sort(key=lambda r: (-r[5], r[2], r[3], r[4]))
    return rows


async def snapshot(url: str, oracle: Oracle) -> dict[tuple[Any, ...], list[Any]]:
    out = {}
    async with aiohttp.ClientSession() as session:
        for program in [*sorted(oracle.programs()), "no-such-program"]:
            for t in TYPES:
                for basis in ("label", "asset"):
                    for m in THRESHOLDS:
                        out[(program, t, basis, m)] = await local_rows(session, url, program, t,
                                                                       basis, m)
    return out


def last_changes(records: list[Any]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The change with the greatest version per segment key (contract §4)."""
    last: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        c = orjson.loads(r.value)
        key = (c["program_id"], c["segment_type"], c["segment_basis"], c["segment_basis_id"],
               c["action_type"], c["min_weight"])
        assert orjson.loads(r.key) == list(key)  # the segment key
        if key not in last or c["version"] > last[key]["version"]:
            last[key] = c
    return last


async def test_exact_counts_dlq_changes_and_restart(kafka_bootstrap: str, tmp_path: Path) -> None:
    records = list(generate(EVENTS, seed=7, programs=3, users=3000, labels=150, assets=400,
                            invalid_ratio=0.01))
    oracle = Oracle()
    oracle.feed(records)
    invalid = [r.value for r in records if not r.valid]
    assert len(invalid) >= 300

    cluster = Cluster(kafka_bootstrap, tmp_path)
    worker = cluster.add_worker()
    try:
        await wait_ready(worker)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await produce_records(kafka_bootstrap, cluster.input_topic, records)
        await wait_no_lag(cluster)
        elapsed = loop.time() - started
        print(f"\n{EVENTS} events produced and processed in {elapsed:.1f}s "
              f"({EVENTS / elapsed:.0f} events/s end to end, informative)")

        # 1. the query function equals the oracle everywhere
        before = await snapshot(worker.url, oracle)
        for (program, t, basis, m), rows in before.items():
            want = oracle.segments(program, t, basis, m) if program in oracle.programs() else []
            assert_rows_equal(rows, want, f"{program}/{t}/{basis}/{m}")
        assert any(before.values())

        # 2. the DLQ holds exactly the invalid records, each with a reason
        dlq = await read_topic(kafka_bootstrap, cluster.dlq_topic)
        assert Counter(m.value for m in dlq) == Counter(invalid)
        for m in dlq:
            reason = dict(m.headers).get("error", b"")
            assert reason.strip(), m.value

        # 3. the last change event per segment at 0.5 equals the current count (read again
        # until it does, or 20 s: the last coalescing interval may still be publishing)
        current = {(p, t, b, row[2], row[3], 0.5): row[5]
                   for (p, t, b, m), rows in before.items() if m == 0.5 for row in rows}
        deadline = loop.time() + 20.0
        while True:
            changes = await read_topic(kafka_bootstrap, cluster.changes_topic)
            last = last_changes(changes)
            counts = {key: change["user_count"] for key, change in last.items()}
            if counts == {**dict.fromkeys(counts, 0), **current} or loop.time() > deadline:
                break
            await asyncio.sleep(0.3)
        for key, count in current.items():
            assert key in last and last[key]["user_count"] == count, key
        for key, change in last.items():
            assert change["user_count"] == current.get(key, 0), (key, change)
        for change in last.values():
            assert change["previous_user_count"] != change["user_count"]

        # 4. restart: identical results, no change events for unchanged segments
        assert worker.stop() == 0, worker.log()
        worker = cluster.add_worker(port=worker.port)
        await wait_ready(worker)
        after = await snapshot(worker.url, oracle)
        assert after.keys() == before.keys()
        for key in before:
            assert_rows_equal(after[key], [tuple(r) for r in before[key]], f"restart {key}")
        await asyncio.sleep(2.0)
        changes_after = await read_topic(kafka_bootstrap, cluster.changes_topic)
        assert len(changes_after) == len(changes), changes_after[len(changes):][:5]

        # 5. `kill -USR1` logs where each partition stands, as the broker has it
        lags = await partition_lags(kafka_bootstrap, cluster.app_id, [cluster.input_topic])
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGUSR1)
        for _ in range(50):
            report = worker.log_path.read_text(errors="replace")
            if "offsets: generation" in report:
                break
            await asyncio.sleep(0.2)
        for tp, (committed, end) in lags.items():
            assert committed == end
            assert f"{tp.topic}[{tp.partition}]: committed {committed}," in report, report
    finally:
        cluster.stop_all()
