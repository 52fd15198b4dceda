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
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from streams.codec.input import parse_event
from streams.codec.keys import family_key
from streams.codec.partitioner import partition_for
from streams.codec.wire import encode_event
from streams.tools.kafka_local import free_port
from streams.tools.probes import partition_lags
from streams.tools.produce import Record, generate
from tests.support.harness import (
    SEGMENTS,
    Cluster,
    Worker,
    final_check,
    produce_records,
    wait_no_lag,
    wait_ready,
    walk_pages,
)
from tests.support.oracle import TYPES, Oracle

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


STOP_EVENTS = 250_000  # a state whose rebuild (in the assignment callback) takes seconds


@pytest.mark.untimed  # judged by what the worker logs and answers; its input takes a minute
async def test_a_worker_stopped_while_it_rebuilds_exits_at_once(kafka_bootstrap: str,
                                                                tmp_path: Path) -> None:
    """SIGTERM while the assignment callback rebuilds: the stop cancels the callback, instead of
    the consumer thread waiting for it until mode's 60 s shutdown timeout (the worker killed
    half-way by any orchestrator with a shorter grace period); the next worker is exact."""
    records = list(generate(STOP_EVENTS, seed=2302, programs=2, users=20_000, late_ratio=0.05))
    cluster = Cluster(kafka_bootstrap, tmp_path)
    try:
        first = start_worker(cluster, None)
        await wait_ready(first)
        await produce_records(kafka_bootstrap, cluster.input_topic, records)
        await wait_no_lag(cluster, timeout_s=300.0)
        assert first.stop() == 0, first.log()
        cluster.workers.remove(first)

        rebuilding = start_worker(cluster, None)
        deadline = time.monotonic() + 90.0
        while "Executing _on_partitions_assigned" not in rebuilding.log_path.read_text(
                errors="replace"):
            assert time.monotonic() < deadline, rebuilding.log()
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        before = rebuilding.log_path.read_text(errors="replace")
        assert rebuilding.stop(timeout_s=50.0) == 0, rebuilding.log()
        stop_s = time.monotonic() - t0
        text = rebuilding.log_path.read_text(errors="replace")
        log(f"stop during the rebuild: {stop_s:.1f}s")
        # The stop landed in the rebuild: in the assignment callback (cancelled), or in the
        # background rebuilds before every partition was rebuilt (runtime/rebuilds.py).
        assert ("its assignment is cancelled" in text
                or before.count("rebuilt in the background") < 8), rebuilding.log()
        assert stop_s < 30.0, stop_s  # 60 s (mode's shutdown timeout) when the stop waited
        cluster.workers.remove(rebuilding)

        last = start_worker(cluster, None)
        await wait_ready(last, timeout_s=300.0)
        oracle = Oracle()
        oracle.feed(records)
        await final_check(cluster, oracle, [last], thresholds=CHECKED, timeout_s=60.0)
    finally:
        cluster.stop_all()


# -- segments migrate ------------------------------------------------------------------------------
MIGRATE_EVENTS = (8_000, 4_000, 3_000)  # before, during and after the migration
MIGRATE_RATE = 400.0  # events/s while the migration runs: the source keeps ingesting
INPUT_PARTITIONS = 3  # neither 8 nor 32: both deployments repartition every event


@dataclass
class MigratedCluster(Cluster):
    """A deployment under a new app id reading another deployment's input topic, with its own
    dead-letter and output topics."""

    source_input: str = ""

    @property
    def input_topic(self) -> str:
        return self.source_input


async def source_and_target(bootstrap: str, tmp_path: Path) -> tuple[Cluster, MigratedCluster]:
    """A source deployment on 8 partitions reading an input topic of INPUT_PARTITIONS (created
    here), and the 32-partition deployment it migrates to, reading the same input."""
    old = Cluster(bootstrap, tmp_path / "old", partitions=8)
    old.run_dir.mkdir()
    new = MigratedCluster(bootstrap, tmp_path / "new", partitions=32,
                          source_input=old.input_topic)
    new.run_dir.mkdir()
    new.extra_env["SEGMENTS_INPUT_TOPIC"] = old.input_topic
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(old.input_topic, INPUT_PARTITIONS, 1)])
    finally:
        await admin.close()
    return old, new


def migrate(cluster: Cluster, *args: str) -> tuple[int, str, float]:
    """`segments migrate ARGS` with the source deployment's settings: exit code, output, seconds."""
    t0 = time.monotonic()
    done = subprocess.run([SEGMENTS, "migrate", *args], env=cluster.env(free_port()),
                          capture_output=True, text=True, timeout=300, check=False)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - t0


async def answers(worker: Worker, programs: list[str]) -> dict[tuple[str, str, str, float],
                                                               list[tuple[object, ...]]]:
    """Every GET /segments answer (all pages, from the owners) at the checked thresholds."""
    out = {}
    async with aiohttp.ClientSession() as session:
        for p in programs:
            for t in TYPES:
                for b in ("label", "asset"):
                    for m in CHECKED:
                        ans = await walk_pages(session, worker.url, p, t, b, m,
                                               consistency="strict")
                        assert ans.status == 200, (worker.port, ans.status, ans.body)
                        out[(p, t, b, m)] = ans.rows
    return out


@pytest.mark.untimed  # judged by its answers; its waits are minutes long
async def test_migrate_8_to_32_partitions_while_the_source_runs(kafka_bootstrap: str,
                                                                tmp_path: Path) -> None:
    started = time.monotonic()
    records = list(generate(sum(MIGRATE_EVENTS), seed=2302, programs=2, users=2000,
                            late_ratio=0.05))
    before, during = MIGRATE_EVENTS[0], MIGRATE_EVENTS[0] + MIGRATE_EVENTS[1]
    old, new = await source_and_target(kafka_bootstrap, tmp_path)
    try:
        source = old.add_worker()
        await wait_ready(source)
        await produce_records(kafka_bootstrap, old.input_topic, records[:before])
        await wait_no_lag(old, timeout_s=120.0)

        # The source ingests while the migration runs.
        producing = asyncio.create_task(produce_records_at(
            kafka_bootstrap, old.input_topic, records[before:during], MIGRATE_RATE))
        await asyncio.sleep(0.5)  # the input is flowing
        code, out, migrate_s = await asyncio.to_thread(
            migrate, old, "--to-app-id", new.app_id, "--partitions", "32")
        assert code == 0, out
        flowing = not producing.done()
        log(f"migrate: {out.strip()} (command {migrate_s:.1f}s; input still flowing when it "
            f"ended: {flowing})")
        # The new group starts where the source's had committed (not from the beginning, which
        # would be exact too, only slower): then the source's moved on.
        cut = await partition_lags(kafka_bootstrap, new.app_id, [old.input_topic])
        now = await partition_lags(kafka_bootstrap, old.app_id, [old.input_topic])
        assert all(0 < done <= now[tp][0] for tp, (done, _) in cut.items()), (cut, now)
        await producing
        # Asked again, it refuses: the target holds data now; so does a partition count of 0.
        code, refused, _ = await asyncio.to_thread(
            migrate, old, "--to-app-id", new.app_id, "--partitions", "32")
        assert code == 2 and "already hold data" in refused, refused
        code, refused, _ = await asyncio.to_thread(
            migrate, old, "--to-app-id", f"{new.app_id}-x", "--partitions", "0")
        assert code == 2 and "--partitions 0" in refused, refused

        t0 = time.monotonic()
        target = new.add_worker()
        await wait_ready(target)
        first_answer_s = time.monotonic() - t0
        await wait_no_lag(old, timeout_s=120.0)
        await wait_no_lag(new, timeout_s=120.0)
        so_far = Oracle()
        so_far.feed(records[:during])
        programs = sorted(so_far.programs())
        assert await answers(target, programs) == await answers(source, programs)
        # (and both are the oracle's)
        report = await final_check(new, so_far, [target], thresholds=CHECKED)

        await produce_records(kafka_bootstrap, old.input_topic, records[during:])
        await wait_no_lag(old, timeout_s=120.0)
        await wait_no_lag(new, timeout_s=120.0)
        oracle = Oracle()
        oracle.feed(records)
        old_report = await final_check(old, oracle, [source], thresholds=CHECKED)
        new_report = await final_check(new, oracle, [target], thresholds=CHECKED)
        log(f"new worker ready {first_answer_s:.1f}s after its start; equal answers, then "
            f"exact: old {old_report.seconds:.1f}s, new {new_report.seconds:.1f}s (first check "
            f"{report.seconds:.1f}s); wall {time.monotonic() - started:.1f}s")
    finally:
        old.stop_all()
        new.stop_all()


@pytest.mark.untimed  # judged by its answers; its waits are minutes long
async def test_migrate_copies_the_events_repartitioned_but_not_applied(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """The cut's second step, made certain: input records whose events are in the repartition
    topic, committed by the source group but not applied (a source stopped between its ingest
    and its aggregation), reach the new deployment through the copy of that backlog; the new
    group does not read them from the input again."""
    records = list(generate(3_000, seed=2303, programs=2, users=1000, late_ratio=0.05))
    applied, backlog = records[:2_000], records[2_000:]
    old, new = await source_and_target(kafka_bootstrap, tmp_path)
    try:
        source = old.add_worker()
        await wait_ready(source)
        await produce_records(kafka_bootstrap, old.input_topic, applied)
        await wait_no_lag(old, timeout_s=120.0)
        assert source.stop() == 0, source.log()
        # What the source's ingest does with input records (the repartitioned event, then the
        # input offsets committed), with no aggregation after it.
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            ends: dict[TopicPartition, int] = {}
            for r in backlog:
                meta = await (await producer.send(old.input_topic, r.value, key=r.key,
                                                  timestamp_ms=r.timestamp_ms))
                ev = parse_event(r.value, r.timestamp_ms)
                key = family_key(ev.family)
                await producer.send(old.repartition_topic, encode_event(
                    ev, r.timestamp_ms, meta.partition, meta.offset), key=key,
                    partition=partition_for(key, old.partitions), timestamp_ms=r.timestamp_ms)
                ends[TopicPartition(old.input_topic, meta.partition)] = meta.offset + 1
            await producer.flush()
        finally:
            await producer.stop()
        committer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=old.app_id,
                                     enable_auto_commit=False)
        await committer.start()
        try:
            committer.assign(list(ends))
            await committer.commit({tp: OffsetAndMetadata(o, "") for tp, o in ends.items()})
        finally:
            await committer.stop()

        code, out, _ = await asyncio.to_thread(
            migrate, old, "--to-app-id", new.app_id, "--partitions", "32")
        assert code == 0, out
        assert f"{len(backlog)} events not yet applied" in out, out
        target = new.add_worker()
        await wait_ready(target)
        await wait_no_lag(new, timeout_s=120.0)
        oracle = Oracle()
        oracle.feed(records)
        await final_check(new, oracle, [target], thresholds=CHECKED)
    finally:
        old.stop_all()
        new.stop_all()


async def produce_records_at(bootstrap: str, topic: str, records: list[Record],
                             rate: float) -> None:
    from streams.tools.produce import produce

    await produce(bootstrap, topic, iter(records), total=len(records), rate=rate)
