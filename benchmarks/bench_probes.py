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

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.codec.durable import encode_recommendation, recommendation_key
from streams.codec.keys import family_key
from streams.codec.names import RECOMMENDATIONS, Names
from streams.codec.partitioner import partition_for
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


def changelog_records(n: int, seed: int = 3) -> Iterator[tuple[int, bytes, bytes]]:
    """(partition, key, value) of ``n`` recommendations in families of 2-5 users, as a worker
    writes them to its recommendations changelog (long tail: the most families, hence the most
    work per recommendation at the end of a rebuild)."""
    rng = random.Random(seed)
    ts = int(time.time() * 1000)
    made = f = 0
    while made < n:
        family = (f"program-{f % 3}", "asset", f"a{f}", ("view", "purchase")[f // 3 % 2])
        partition = partition_for(family_key(family), PARTITIONS)
        for u in rng.sample(range(100_000), min(rng.randint(2, 5), n - made)):
            yield partition, recommendation_key(family, f"u{u}"), encode_recommendation(
                round(rng.random(), 4), rng.random() < 0.4, ts, made, partition, f"Asset {f}")
            made += 1
        f += 1


async def write_changelog(run: Run, n: int) -> None:
    """The state of a deployment that applied ``n`` recommendations, written straight to its
    changelog (ingest through a worker is what `segments bench` measures; this one needs the
    state, fast, on a shared machine)."""
    topic = Names(run.app_id, run.topic, "", "").changelog_topic(RECOMMENDATIONS)
    admin = AIOKafkaAdminClient(bootstrap_servers=run.bootstrap, **run.kafka)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(run.topic, PARTITIONS, 1),
            NewTopic(topic, PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=run.bootstrap, linger_ms=20, acks=1,
                                max_batch_size=512 * 1024, **run.kafka)
    await producer.start()
    try:
        pending = []
        for partition, key, value in changelog_records(n):
            pending.append(await producer.send(topic, value, key=key, partition=partition))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def main(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    n = args.recommendations
    out: dict[str, Any] = {"recommendations": n}
    t0 = time.perf_counter()
    print(f"writing {n:,} recommendations to the changelog", flush=True)
    await write_changelog(run, n)
    out["write_s"] = round(time.perf_counter() - t0, 1)
    worker = WorkerProc(run, kafka_local.free_port())
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
        worker.proc.send_signal(signal.SIGTERM)  # a graceful leave: no session timeout to wait
        worker.proc.wait(120)
    worker.stop()
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
