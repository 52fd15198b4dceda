"""Probe latency (contract §12) with a large state: GET /livez, /readyz, /healthz and /metrics
answered by one worker holding N recommendations, idle and while it rebuilds them all from the
changelog after a restart.

    python benchmarks/bench_probes.py [--recommendations 3000000] [--once]

Starts its own broker (or uses KAFKA_BOOTSTRAP_SERVERS); writes N recommendations in families
of 2-5 users straight to a deployment's recommendations changelog; starts one worker, which
rebuilds them all; probes it one request at a time over one keep-alive connection (as a
kubelet or a load balancer does) from its first HTTP answer until /healthz says 200, then
idle; then the same again after a graceful restart (unless --once). Prints and writes
benchmarks/probes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.codec.durable import (
    emitted_key,
    encode_emitted,
    encode_recommendation,
    recommendation_key,
)
from streams.codec.keys import family_key
from streams.codec.names import EMITTED_COUNTS, RECOMMENDATIONS, Names
from streams.codec.partitioner import partition_for
from streams.domain.events import SegmentType
from streams.tools import kafka_local
from streams.tools.bench import PARTITIONS, Run, WorkerProc, _pct

PATHS = ("/livez", "/readyz", "/healthz", "/metrics")


async def _probe(session: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    async with session.get(url) as resp:
        await resp.read()
        return time.perf_counter() - started, resp.status


def _summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    return {path: {"n": len(v), "p50_ms": round(_pct(v, 0.5) * 1000, 2),
                   "p99_ms": round(_pct(v, 0.99) * 1000, 2),
                   "max_ms": round(max(v) * 1000, 2) if v else None}
            for path, v in samples.items()}


async def idle(worker: WorkerProc, rounds: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {p: [] for p in PATHS}
    statuses: dict[str, dict[int, int]] = {p: {} for p in PATHS}
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            for path in PATHS:
                took, status = await _probe(session, worker.url + path)
                samples[path].append(took)
                statuses[path][status] = statuses[path].get(status, 0) + 1
            await asyncio.sleep(0.002)
    return {"probes": _summary(samples), "statuses": statuses}


async def during_rebuild(worker: WorkerProc, timeout_s: float) -> dict[str, Any]:
    """From the worker's first HTTP answer until /healthz answers 200: every probe's latency
    (statuses counted), a round every 5 ms."""
    samples: dict[str, list[float]] = {p: [] for p in PATHS}
    statuses: dict[str, dict[int, int]] = {p: {} for p in PATHS}
    deadline = time.perf_counter() + timeout_s
    first = None
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() < deadline:
            try:
                if first is None:
                    await _probe(session, worker.url + "/livez")
                    first = time.perf_counter()
                    continue
                done = False
                for path in PATHS:
                    took, status = await _probe(session, worker.url + path)
                    samples[path].append(took)
                    statuses[path][status] = statuses[path].get(status, 0) + 1
                    done = done or (path == "/healthz" and status == 200)
                if done:
                    break
            except aiohttp.ClientError:
                if first is not None:
                    raise
            await asyncio.sleep(0.005)
        else:
            raise RuntimeError("the worker was not ready in time")
    assert first is not None
    return {"seconds_probed": round(time.perf_counter() - first, 1),
            "probes": _summary(samples), "statuses": statuses}


def changelog_records(n: int, seed: int = 3) -> Iterator[tuple[str, int, bytes, bytes]]:
    """(table, partition, key, value) of ``n`` recommendations in families of 2-5 users, as a
    worker writes them to its two changelogs once it has published their counts at the
    default watched threshold (long tail: the most families, hence the most work per
    recommendation at the end of a rebuild)."""
    rng = random.Random(seed)
    ts = int(time.time() * 1000)
    made = f = 0
    while made < n:
        family = (f"program-{f % 3}", "asset", f"a{f}", ("view", "purchase")[f // 3 % 2])
        partition = partition_for(family_key(family), PARTITIONS)
        counts: dict[SegmentType, int] = {"growth": 0, "base": 0, "discovery": 0}
        for u in rng.sample(range(100_000), min(rng.randint(2, 5), n - made)):
            weight, in_history = round(rng.random(), 4), rng.random() < 0.4
            yield RECOMMENDATIONS, partition, recommendation_key(family, f"u{u}"), \
                encode_recommendation(weight, in_history, ts, made, partition, f"Asset {f}")
            if weight >= 0.5:
                counts["growth"] += 1
                counts["base" if in_history else "discovery"] += 1
            made += 1
        for segment_type, count in counts.items():
            if count:
                yield EMITTED_COUNTS, partition, emitted_key((family, segment_type, 0.5)), \
                    encode_emitted(count, partition)
        f += 1


async def write_changelog(run: Run, n: int) -> None:
    """The state of a deployment that applied ``n`` recommendations, written straight to its
    changelog (ingest through a worker is what `segments bench` measures; this one needs the
    state, fast, on a shared machine)."""
    names = Names(run.app_id, run.topic, "", "")
    topics = {table: names.changelog_topic(table) for table in (RECOMMENDATIONS, EMITTED_COUNTS)}
    admin = AIOKafkaAdminClient(bootstrap_servers=run.bootstrap, **run.kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(run.topic, PARTITIONS, 1)] + [
            NewTopic(t, PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"})
            for t in topics.values()])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=run.bootstrap, linger_ms=20, acks=1,
                                max_batch_size=512 * 1024, **run.kafka)
    await producer.start()
    try:
        pending = []
        for table, partition, key, value in changelog_records(n):
            pending.append(await producer.send(topics[table], value, key=key,
                                               partition=partition))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def loop_holds(run: Run) -> dict[str, Any]:
    """The worker's own rebuild code (Recovery, ChangelogReader, the registry's settling) run
    in this process over the same changelog, with a task that takes a turn whenever the event
    loop lets it: the CPU time of this thread between two of its turns is how long the rebuild
    held the loop, whatever else the machine runs (the wall-clock probes above also wait for
    the CPU on a shared machine)."""
    from streams.codec.names import TABLES
    from streams.runtime.partitions import PartitionRegistry
    from streams.runtime.recovery import ChangelogReader, Recovery, consumer_factory

    names = Names(run.app_id, run.topic, "", "")
    registry = PartitionRegistry((0.5,))
    ends_consumer = AIOKafkaConsumer(bootstrap_servers=run.bootstrap, **run.kafka)
    await ends_consumer.start()

    async def highwaters(topic: str, partitions: set[int]) -> dict[int, int]:
        ends = await ends_consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: end for tp, end in ends.items()}

    reader = ChangelogReader(consumer_factory(bootstrap_servers=run.bootstrap, **run.kafka))
    recovery = Recovery(registry, reader, names, highwaters)
    holds: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.thread_time()
        while not done:
            await asyncio.sleep(0)
            now = time.thread_time()
            holds.append(now - last)
            last = time.thread_time()

    assigned = set(range(PARTITIONS))
    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    try:
        for table in TABLES:
            await recovery.on_rebalance(table, assigned)
        for table in TABLES:
            await recovery.on_recovered(table, assigned)
        await recovery.rebuilds.drain()  # (a worker runs them in the background)
    finally:
        done = True
        await task
        await ends_consumer.stop()
        await reader.close()
    return {"rebuild_s": round(time.perf_counter() - started, 1),
            "held": registry.recommendations(), "turns": len(holds),
            "hold_cpu_p50_ms": round(_pct(holds, 0.5) * 1000, 3),
            "hold_cpu_p99_ms": round(_pct(holds, 0.99) * 1000, 3),
            "hold_cpu_p999_ms": round(_pct(holds, 0.999) * 1000, 3),
            "hold_cpu_max_ms": round(max(holds) * 1000, 3)}


async def main(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    n = args.recommendations
    out: dict[str, Any] = {"recommendations": n}
    t0 = time.perf_counter()
    print(f"writing {n:,} recommendations to the changelog", flush=True)
    await write_changelog(run, n)
    out["write_s"] = round(time.perf_counter() - t0, 1)
    worker = WorkerProc(run, kafka_local.free_port())
    try:
        for attempt in ("first_start", "restart"):
            t0 = time.perf_counter()
            worker.start()
            out[attempt] = await during_rebuild(worker, timeout_s=1800)
            out[attempt]["start_to_ready_s"] = round(time.perf_counter() - t0, 1)
            out[attempt]["held"] = await worker.recommendations()
            out[attempt]["rss_mib"] = round(worker.rss() / 2**20)
            print(attempt, json.dumps(out[attempt]), flush=True)
            out[f"idle_after_{attempt}"] = await idle(worker, args.rounds)
            print("idle", json.dumps(out[f"idle_after_{attempt}"]), flush=True)
            if args.once:
                break
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGTERM)  # a graceful leave: no session timeout
            worker.proc.wait(120)
    finally:
        worker.stop()
    out["loop_holds_in_process"] = await loop_holds(run)
    print("in-process rebuild", json.dumps(out["loop_holds_in_process"]), flush=True)
    return out


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recommendations", type=int, default=3_000_000)
    parser.add_argument("--once", action="store_true", help="no restart (one rebuild)")
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/probes.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segments-probes-") as tmp:
        work = Path(tmp)
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        own = bootstrap is None
        try:
            if own:
                state, _ = kafka_local.start(port=kafka_local.free_port(),
                                             data_dir=work / "kafka")
                bootstrap = state.bootstrap
            assert bootstrap is not None
            out = asyncio.run(main(args, Run(bootstrap, work, None)))
        finally:
            if own:
                kafka_local.stop(work / "kafka")
    out["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out["machine"] = f"{os.cpu_count()} cores, Python {platform.python_version()}, " \
                     f"load average {os.getloadavg()[0]:.1f}"
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    cli()
