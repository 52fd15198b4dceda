"""The count topics as a consumer sees them, after a small real run of one worker: every record
it writes validates against schemas/ (contract 4c), and `segments watch` in a terminal shows
the program's top segments as `GET /segments` lists them, then moves when new events arrive.
(Input records: tests/unit/codec/test_json_schemas.py; watch on records written by hand:
tests/e2e/test_watch.py.)"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
import pytest_asyncio

from streams.codec.keys import family_key
from streams.tools.produce import Record, generate
from tests.support.harness import (
    Cluster,
    Worker,
    feed,
    final_check,
    get_json,
    produce_records,
    read_topic_complete,
)
from tests.support.oracle import Oracle
from tests.support.pty_process import PtyProcess
from tests.support.schemas import record_problems
from tests.support.terminal import last_frame, plain, table_rows

# untimed: its waits are a minute long, and only what the topics hold is judged.
pytestmark = [pytest.mark.integration, pytest.mark.untimed]

SEGMENTS = str(Path(sys.executable).parent / "segments")
WATCHED = (0.5, 0.8)
PROGRAM = "program-0"


@dataclass
class Deployment:
    cluster: Cluster
    workers: list[Worker]
    oracle: Oracle


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployment(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
                     ) -> AsyncIterator[Deployment]:
    cluster = Cluster(kafka_bootstrap, tmp_path_factory.mktemp("schemas"), extra_env={
        "SEGMENTS_WATCH_THRESHOLDS": ",".join(map(str, WATCHED))})
    # Many withdrawals, so that segments empty (segment-counts tombstones) too.
    records = list(generate(6_000, seed=23, programs=2, users=300, labels=25, assets=30,
                            removal_ratio=0.2, invalid_ratio=0.01))
    oracle = Oracle()
    oracle.feed(records)
    workers = [cluster.add_worker()]
    try:
        await feed(cluster, workers, records)
        # A segment that surely empties after its count was published (the withdrawals above
        # may all land within one change interval, and a count never published needs no
        # tombstone): one member, published, then withdrawn.
        now = int(time.time() * 1000)
        for doc in ({"weight": 0.9, "ts": now}, {"weight": None, "ts": now + 1}):
            one = [_tomb_event(doc)]
            oracle.feed(one)
            await feed(cluster, workers, one)
            await _wait_for_count(cluster, published=doc["weight"] is not None)
        # (also: the topics equal GET /segments, and every record validates: see final_check)
        await final_check(cluster, oracle, workers, thresholds=WATCHED, watched=WATCHED)
        yield Deployment(cluster, workers, oracle)
    finally:
        cluster.stop_all()


def _tomb_event(doc: dict[str, object]) -> Record:
    family = (PROGRAM, "label", "tomb", "view")
    value = {"program_id": PROGRAM, "user_id": "tomb-user", "segment_basis": "label",
             "basis_id": "tomb", "action_type": "view", "in_history": False, **doc}
    return Record(family_key(family), orjson.dumps(value), int(str(doc["ts"])), True)


async def _wait_for_count(cluster: Cluster, published: bool, timeout_s: float = 60.0) -> None:
    """Until segment-counts' last record of the "tomb" segment at 0.5 is a count (``published``)
    or a tombstone."""
    key = orjson.dumps([PROGRAM, "growth", "label", "tomb", "view", 0.5])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        last = [r for r in await read_topic_complete(cluster.bootstrap, cluster.counts_topic)
                if r.key == key]
        if last and (last[-1].value is not None) == published:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"segment-counts has no {'count' if published else 'tombstone'} "
                         f"for {key!r}")


@pytest.mark.asyncio(loop_scope="session")
async def test_every_change_event_and_count_record_validates(deployment: Deployment) -> None:
    cluster = deployment.cluster
    changes = await read_topic_complete(cluster.bootstrap, cluster.changes_topic)
    counts = await read_topic_complete(cluster.bootstrap, cluster.counts_topic)
    tombstones = [r for r in counts if r.value is None]
    thresholds = {orjson.loads(r.key)[5] for r in counts}
    assert len(changes) > 100 and len(counts) > 100 and tombstones, (
        len(changes), len(counts), len(tombstones))
    assert thresholds == set(WATCHED)
    assert record_problems(changes, "change", limit=20) == []
    assert record_problems(counts, "count", limit=20) == []


TITLE = f"program {PROGRAM} · growth labels · min_weight 0.5"


def watched_rows(output: bytes) -> tuple[list[list[str]], str]:
    frame = last_frame(plain(output), TITLE)
    status = frame.strip().splitlines()[-1] if frame.strip() else ""
    return [[cells[1], cells[2], cells[4]] for cells in table_rows(frame)], status


async def top_segments(session: aiohttp.ClientSession, worker: Worker, size: int
                       ) -> list[list[str]]:
    status, body = await get_json(session, worker.url + "/segments", params={
        "min_weight": "0.5", "size": str(size), "force_refresh": "true"},
        headers={"program-id": PROGRAM})
    assert status == 200, body
    return [[i["segment_basis_id"], i["action_type"], str(i["user_count"])]
            for i in body["items"]]


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="session")
async def test_segments_watch_shows_what_get_segments_lists_and_moves_with_new_events(
        deployment: Deployment) -> None:
    cluster, worker = deployment.cluster, deployment.workers[0]
    watcher = PtyProcess([SEGMENTS, "watch", "--program", PROGRAM, "--threshold", "0.5",
                          "--size", "5"], cluster.env(worker.port))
    try:
        async with aiohttp.ClientSession() as session:
            want = await top_segments(session, worker, 5)
            assert len(want) == 5

            def bootstrapped(output: bytes) -> bool:
                rows, status = watched_rows(output)
                return status.endswith("live") and rows == want

            assert await asyncio.to_thread(watcher.wait_for, bootstrapped, 60), (
                watched_rows(bytes(watcher.output)), want)

            # New users for the fifth segment, enough to take it to the top.
            basis_id, action, count = want[4][0], want[4][1], int(want[4][2])
            added = int(want[0][2]) - count + 3
            now = int(time.time() * 1000)
            doc = {"program_id": PROGRAM, "segment_basis": "label", "basis_id": basis_id,
                   "action_type": action, "weight": 0.9, "in_history": True}
            key = family_key((PROGRAM, "label", basis_id, action))
            await produce_records(cluster.bootstrap, cluster.input_topic, [
                Record(key, orjson.dumps({**doc, "user_id": f"watch-{i}", "ts": now}), now, True)
                for i in range(added)])
            moved_to = [basis_id, action, str(count + added)]

            def moved(output: bytes) -> bool:
                rows, _ = watched_rows(output)
                return bool(rows) and rows[0] == moved_to

            assert await asyncio.to_thread(watcher.wait_for, moved, 60), (
                watched_rows(bytes(watcher.output)), moved_to)
            now_listed = await top_segments(session, worker, 5)
            assert now_listed[0] == moved_to and now_listed[1:] == want[:4]
            assert await asyncio.to_thread(
                watcher.wait_for, lambda output: watched_rows(output)[0] == now_listed, 30), (
                watched_rows(bytes(watcher.output)), now_listed)
        assert await asyncio.to_thread(watcher.interrupt) in (0, 130)
    finally:
        watcher.close()
    assert b"Traceback" not in watcher.output
