"""Growing and restarting without stopping (contract §11) on the real broker, checked exactly
against the oracle:

- static membership: a worker with ``SEGMENTS_INSTANCE_ID`` restarted (SIGTERM, start again)
  within its session gets its partitions back with no rebalance on the others
  (``segments_rebalances_total`` unchanged); without an instance id the same restart
  rebalances them (the test can fail);
- ``segments migrate``: a loaded 8-partition deployment copied to 32 partitions under a new
  app id while it runs; the new workers answer what the old ones answer, then both follow new
  input exactly.

Small data: each test takes seconds of input; every wait is for a condition.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import pytest

from streams.tools.kafka_local import free_port
from streams.tools.produce import generate
from tests.support.harness import (
    Cluster,
    Worker,
    final_check,
    produce_records,
    wait_no_lag,
    wait_ready,
)
from tests.support.oracle import Oracle

pytestmark = pytest.mark.integration

STATIC_EVENTS = 6_000
CHECKED = (0.25, 0.5, 0.731)  # thresholds the final checks ask (0.5 is the watched one)


def log(msg: str) -> None:
    print(f"[growth {time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def rebalances(worker: Worker) -> int:
    """The worker's ``segments_rebalances_total`` (GET /metrics)."""
    async with aiohttp.ClientSession() as session, session.get(worker.url + "/metrics") as resp:
        text = await resp.text()
    found = re.search(r"^segments_rebalances_total (\S+)$", text, re.MULTILINE)
    assert found, text[:500]
    return int(float(found.group(1)))


async def settled(workers: list[Worker], quiet_s: float = 2.0, timeout_s: float = 60.0
                  ) -> list[int]:
    """The workers' rebalance counts once every one is ready and none moved for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last: list[int] = []
    since = time.monotonic()
    while time.monotonic() < deadline:
        for w in workers:
            await wait_ready(w)
        counts = [await rebalances(w) for w in workers]
        if counts != last:
            last, since = counts, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return counts
        await asyncio.sleep(0.5)
    raise AssertionError(f"rebalances still moving after {timeout_s}s: {last}")


def start_worker(cluster: Cluster, instance_id: str | None, port: int | None = None) -> Worker:
    port = port or free_port()
    env = cluster.env(port)
    if instance_id is not None:
        env["SEGMENTS_INSTANCE_ID"] = instance_id
    w = Worker(env, cluster.run_dir / f"worker-{port}.log", port).start()
    cluster.workers.append(w)
    return w


@pytest.mark.parametrize("static", [True, False], ids=["instance-id", "no-instance-id"])
async def test_restart_within_the_session(kafka_bootstrap: str, tmp_path: Path,
                                          static: bool) -> None:
    started = time.monotonic()
    records = list(generate(STATIC_EVENTS, seed=2301, programs=2, users=1500, late_ratio=0.05))
    first, rest = records[: STATIC_EVENTS // 2], records[STATIC_EVENTS // 2:]
    cluster = Cluster(kafka_bootstrap, tmp_path)
    try:
        workers = [start_worker(cluster, f"w{i}" if static else None) for i in range(2)]
        for w in workers:
            await wait_ready(w)
        await produce_records(kafka_bootstrap, cluster.input_topic, first)
        await wait_no_lag(cluster, timeout_s=120.0)
        before = await settled(workers)

        victim = workers[1]
        t0 = time.monotonic()
        assert victim.stop() == 0, victim.log()
        stopped_s = time.monotonic() - t0
        # Input goes on while the victim is down and while it comes back.
        producing = asyncio.create_task(
            produce_records(kafka_bootstrap, cluster.input_topic, rest))
        cluster.workers.remove(victim)
        workers[1] = start_worker(cluster, victim.env.get("SEGMENTS_INSTANCE_ID"), victim.port)
        await wait_ready(workers[1])
        back_s = time.monotonic() - t0
        await producing
        await wait_no_lag(cluster, timeout_s=120.0)
        oracle = Oracle()
        oracle.feed(records)
        report = await final_check(cluster, oracle, workers, thresholds=CHECKED, timeout_s=60.0)
        after = [await rebalances(w) for w in workers]
        log(f"static={static}: stop {stopped_s:.1f}s, back (ready) {back_s:.1f}s after the "
            f"SIGTERM; rebalances of the other worker {before[0]} -> {after[0]}, of the "
            f"restarted one {after[1]} (new process); final check {report.seconds:.1f}s; wall "
            f"{time.monotonic() - started:.1f}s")
        if static:
            assert after[0] == before[0], (before, after)
        else:
            assert after[0] > before[0], (before, after)
    finally:
        cluster.stop_all()
