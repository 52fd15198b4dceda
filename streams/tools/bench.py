"""`segments bench`: side-by-side measurements on one local broker, in one run.

1. raw       a count-only aiokafka ``getmany`` loop over N events (the practical limit)
2. ingest    one worker, cold start to zero lag over the same N events -> events/s, ratio
3. freshness at half the ingest rate, produce -> visible in GET /segments?force_refresh=true
             (``--freshness-only``: phases 2 and 3 alone, phase 3 ``--freshness-runs`` times)
4. api       one program with S segments and R recommendations: GET /segments p50/p99
             (cached and force_refresh) with C concurrent clients, requests/s
5. memory    worker RSS per recommendation held at R recommendations
6. recovery  worker start -> ready with R recommendations in the changelog
7. standby   two workers rebuilt from the same changelogs, without and with a standby copy of
             every partition: what a copy costs per recommendation
8. long tail a fresh worker holding L recommendations in families of 2 to 5 users: RSS per
             recommendation held, idle (and its RSS idle before them); ``--long-tail-only``
             runs it alone
9. pushdown  one program of P segments on 3 workers with ingest at half rate: force_refresh
             p99 of pages 1 and 50 (size 100), bytes per peer answer, cached p99, and the
             computations 16 identical concurrent misses cost (streams/tools/bench_pushdown.py;
             ``--pushdown-only`` runs it alone)

Results go to ``benchmarks/results.json`` and the table in ``BENCHMARKS.md``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from streams.codec.keys import family_key
from streams.runtime.kafka_clients import client_options, start_consumer
from streams.settings import KafkaSecurity
from streams.tools import kafka_local
from streams.tools.bench_pushdown import pushdown
from streams.tools.probes import group_lag, wait_http_ready
from streams.tools.produce import Record, base_ts_ending_now, generate, produce
from streams.tools.redis_local import RedisServer

console = Console(stderr=True)
PARTITIONS = 8
PUSHDOWN_DEFAULT_RATE = 10_000.0  # the load of phase 9 run alone: about half one worker's ingest


@dataclass
class BenchConfig:
    events: int = 200_000
    api_recommendations: int = 1_000_000
    api_segments: int = 10_000
    clients: int = 16
    api_requests: int = 1_600
    probes: int = 100
    stream_clients: int = 200
    long_tail_recommendations: int = 1_000_000
    pushdown_segments: int = 100_000
    pushdown_workers: int = 3
    pushdown_requests: int = 100
    pushdown_rate: float | None = None  # events/s of the load; None: half the ingest rate
    pushdown_only: bool = False
    long_tail_only: bool = False
    freshness_only: bool = False
    freshness_runs: int = 5  # with freshness_only: probe runs in a row over one worker
    out_dir: Path = Path("benchmarks")
    doc: Path = Path("BENCHMARKS.md")


@dataclass
class Run:
    bootstrap: str
    work: Path
    redis_url: str | None
    app_id: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}")
    input_topic: str = ""  # default: "<app_id>-in"
    extra_env: dict[str, str] = field(default_factory=dict)
    kafka: dict[str, Any] = field(default_factory=dict)  # security options of its clients

    @property
    def topic(self) -> str:
        return self.input_topic or f"{self.app_id}-in"

    def env(self, port: int) -> dict[str, str]:
        # The bench's workers: its own settings, keys and secrets none (it asks with none).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SEGMENTS_API_KEYS", "SEGMENTS_CLUSTER_SECRET"))
               and (self.kafka or not k.startswith(("KAFKA_SECURITY_", "KAFKA_SASL_",
                                                     "KAFKA_SSL_")))}
        env.update({
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "SEGMENTS_APP_ID": self.app_id,
            "SEGMENTS_INPUT_TOPIC": self.topic, "SEGMENTS_DLQ_TOPIC": f"{self.app_id}-dlq",
            "SEGMENTS_CHANGES_TOPIC": f"{self.app_id}-changes",
            "SEGMENTS_COUNTS_TOPIC": f"{self.app_id}-counts",
            "SEGMENTS_PARTITIONS": str(PARTITIONS), "SEGMENTS_WEB_PORT": str(port),
            "SEGMENTS_DATA_DIR": str(self.work / "worker"), "SEGMENTS_LOG_LEVEL": "WARNING",
        })
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        env.update(self.extra_env)
        return env


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _create_topic(bootstrap: str, topic: str, **kafka: Any) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()


async def raw_consume(bootstrap: str, topic: str, n: int, **kafka: Any) -> float:
    """Events/s of a count-only getmany loop over all partitions, from the beginning."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024, **kafka)
    await start_consumer(consumer)
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        count = 0
        started = time.perf_counter()
        while count < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for msgs in batch.values():
                count += len(msgs)
        return n / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def pure_aggregation(records: list[Record], publish_every: int = 0) -> float:
    """Events/s of the aggregation alone: what the hot path costs without Faust and Kafka;
    with ``publish_every``, a ledger tick every that many events with its changes' keys and
    payloads encoded, as the worker's publisher does."""
    from streams.codec.changes import change_payload, count_payload, segment_key
    from streams.codec.durable import encode_applied, recommendation_key
    from streams.codec.input import parse_event
    from streams.domain.exceptions import InvalidEvent
    from streams.domain.ledger import ChangeLedger
    from streams.domain.store import FamilyStore

    store = FamilyStore()
    ledger = ChangeLedger(0, (0.5,))
    started = time.perf_counter()
    for offset, r in enumerate(records):
        try:
            ev = parse_event(r.value, r.timestamp_ms)
        except InvalidEvent:
            continue
        if store.apply(ev, offset):
            recommendation_key(ev.family, ev.user_id)
            encode_applied(ev, offset, 0)
        if publish_every and offset % publish_every == publish_every - 1:
            pub = ledger.take(store)
            if pub is not None:
                for c in pub.changes:
                    segment_key(c.key)
                    change_payload(c, 0, 0)
                    count_payload(c, 0)
                ledger.published(pub)
    return len(records) / (time.perf_counter() - started)


class WorkerProc:
    def __init__(self, run: Run, port: int) -> None:
        self.run, self.port = run, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        log = open(self.run.work / f"worker-{self.port}.log", "ab")  # noqa: SIM115
        started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"],
                                     env=self.run.env(self.port), stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        return started

    async def wait_ready(self, timeout_s: float = 300.0) -> float:
        return await wait_http_ready(self.url, self.proc, timeout_s)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return (self.run.work / f"worker-{self.port}.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def rss(self) -> int:
        import psutil

        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    async def recommendations(self) -> int:
        """Recommendations the worker holds, as its /healthz says."""
        async with aiohttp.ClientSession() as session, session.get(self.url + "/healthz") as r:
            return int((await r.json())["recommendations"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def wait_no_lag(run: Run, timeout_s: float) -> float:
    topics = [run.topic, f"{run.app_id}-recommendations-by-segment"]
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if await group_lag(run.bootstrap, run.app_id, topics, **run.kafka) == 0:
            return time.perf_counter()
        await asyncio.sleep(0.1)
    raise RuntimeError("the worker did not catch up in time")


def api_records(program: str, segments: int, recs: int, seed: int) -> Iterator[Record]:
    """``recs`` recommendations spread evenly over ``segments`` families of one program."""
    rng = random.Random(seed)
    labels = max(1, segments // 2)
    per_segment = max(1, recs // segments)
    ts = int(time.time() * 1000)
    for u in range(per_segment):
        for s in range(segments):
            basis_id, action = f"l{s % labels}", ("view", "purchase")[s // labels % 2]
            doc = {"program_id": program, "user_id": f"u{u}", "segment_basis": "label",
                   "basis_id": basis_id, "name": f"Label {s % labels}", "action_type": action,
                   "weight": round(rng.random(), 4), "in_history": rng.random() < 0.4, "ts": ts}
            yield Record(family_key((program, "label", basis_id, action)), orjson.dumps(doc), ts,
                         True)


def long_tail_records(recs: int, seed: int, users: int = 100_000,
                      programs: int = 3) -> Iterator[Record]:
    """``recs`` recommendations in families of 2 to 5 users each (one asset and action
    per family, users drawn from a pool of ``users``): the common shape of asset segments."""
    rng = random.Random(seed)
    ts = int(time.time() * 1000)
    made = f = 0
    while made < recs:
        program, action = f"program-{f % programs}", ("view", "purchase")[f // programs % 2]
        basis_id = f"a{f}"
        key = family_key((program, "asset", basis_id, action))
        members = rng.sample(range(users), min(rng.randint(2, 5), recs - made))
        for u in members:
            doc = {"program_id": program, "user_id": f"u{u}", "segment_basis": "asset",
                   "basis_id": basis_id, "name": f"Asset {f}", "action_type": action,
                   "weight": round(rng.random(), 4), "in_history": rng.random() < 0.4,
                   "ts": ts}
            yield Record(key, orjson.dumps(doc), ts, True)
        made += len(members)
        f += 1


def seeded_events(n: int) -> Iterator[Record]:
    """The bench's ``n`` input events: 3 programs, the last of them now."""
    return generate(n, seed=42, programs=3, users=20_000, labels=2_000, assets=5_000,
                    base_ts=base_ts_ending_now(n))


def latency_figures(latencies: list[float]) -> dict[str, float]:
    """Probes, p50 and p99 (ms) of latencies in seconds."""
    return {"probes": len(latencies), "p50_ms": _pct(latencies, 0.5) * 1000,
            "p99_ms": _pct(latencies, 0.99) * 1000}


async def freshness(run: Run, worker: WorkerProc, rate: float, probes: int,
                    tag: str = "") -> list[float]:
    """Latency from producing a probe event to seeing it in a force_refresh answer, while
    synthetic load runs at ``rate`` events/s.

    The load comes from a separate process (``segments produce``): produced from this
    process's event loop, it delayed the probes' own sends (one probe's acknowledgement took
    451 ms of its 565 ms) and their polls, which measured the bench, not the worker.
    ``tag``: names this run's probe programs (each run's must be new to the worker)."""
    from aiokafka import AIOKafkaProducer

    load = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams.cli", "produce", "--events", str(10**9),
        "--seed", "99", "--programs", "3", "--rate", str(rate),
        # the clock runs 10 ms per event: start it far enough back for 10 minutes of load
        "--base-ts", str(base_ts_ending_now(int(rate * 600))),
        "--topic", run.topic, "--bootstrap", run.bootstrap,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    producer = AIOKafkaProducer(bootstrap_servers=run.bootstrap, linger_ms=0, acks=1,
                                **run.kafka)
    await producer.start()
    latencies: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(2.0)
            for k in range(probes):
                program = f"probe-{run.app_id}-{tag}{k}"
                doc = {"program_id": program, "user_id": "u", "segment_basis": "label",
                       "basis_id": "probe", "action_type": "view", "weight": 1.0,
                       "in_history": False}
                key = family_key((program, "label", "probe", "view"))
                sent = time.perf_counter()
                await producer.send_and_wait(run.topic, orjson.dumps(doc), key=key)
                while True:
                    async with session.get(worker.url + "/segments",
                                           params={"force_refresh": "true"},
                                           headers={"program-id": program}) as resp:
                        body = await resp.json()
                    if resp.status == 200 and body["total"] == 1:
                        latencies.append(time.perf_counter() - sent)
                        break
                    if time.perf_counter() - sent > 30:
                        raise RuntimeError("a probe never became visible")
                    await asyncio.sleep(0.01)  # 100 polls/s: measuring must not starve it
                await asyncio.sleep(0.05)
    finally:
        load.terminate()
        try:
            await asyncio.wait_for(load.wait(), 30)
        except TimeoutError:
            load.kill()
            await load.wait()
        await producer.stop()
    return latencies


async def freshness_runs(cfg: BenchConfig, run: Run) -> dict[str, Any]:
    """Phases 2 and 3 alone: one worker ingests the seeded events from a cold start, then
    freshness is measured ``cfg.freshness_runs`` times in a row at half that ingest rate."""
    n = cfg.events
    await _create_topic(run.bootstrap, run.topic, **run.kafka)
    console.print(f"producing {n} seeded events")
    await produce(run.bootstrap, run.topic, seeded_events(n), total=n, kafka=run.kafka)
    console.print("2. ingest: one worker, cold start to zero lag")
    worker = WorkerProc(run, kafka_local.free_port())
    started = worker.start()
    try:
        await worker.wait_ready()
        ingest = n / (await wait_no_lag(run, timeout_s=900) - started)
        rate = ingest / 2
        runs = []
        for i in range(cfg.freshness_runs):
            # From an idle worker, as in the whole bench (there phase 2b comes in between):
            # after the backlog its publisher still has the new families' changes to publish.
            await wait_changes_published(worker)
            console.print(f"3. freshness at half the ingest rate, run {i + 1} of "
                          f"{cfg.freshness_runs}")
            lat = await freshness(run, worker, rate, cfg.probes, tag=f"r{i}-")
            runs.append(latency_figures(lat))
            await wait_no_lag(run, timeout_s=600)
    finally:
        worker.stop()
    return {"ingest_events_per_s": ingest, "rate_events_per_s": rate, "runs": runs}


async def api_latency(worker: WorkerProc, program: str, refresh: bool, clients: int,
                      requests: int) -> dict[str, float]:
    latencies: list[float] = []
    per_client = max(1, requests // clients)
    params = {"force_refresh": "true" if refresh else "false", "min_weight": "0.5"}

    async def client(session: aiohttp.ClientSession, i: int, n: int, record: bool) -> None:
        for j in range(n):
            page = str(1 + (i * n + j) % 20)
            t0 = time.perf_counter()
            async with session.get(worker.url + "/segments", params={**params, "page": page},
                                   headers={"program-id": program}) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET /segments answered {resp.status}")
            if record:
                latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(worker.url + "/segments", params=params,
                               headers={"program-id": program}) as resp:
            body = await resp.json()
            if body["total"] == 0:
                raise RuntimeError("the API program has no segments")
        # Warm-up, not measured: every client's connection opened, every page asked once.
        await asyncio.gather(*(client(session, i, max(2, 40 // clients), False)
                               for i in range(clients)))
        started = time.perf_counter()
        await asyncio.gather(*(client(session, i, per_client, True) for i in range(clients)))
        elapsed = time.perf_counter() - started
    return {"p50_ms": _pct(latencies, 0.5) * 1000, "p99_ms": _pct(latencies, 0.99) * 1000,
            "requests_per_s": len(latencies) / elapsed, "requests": len(latencies)}


async def bench(cfg: BenchConfig, run: Run) -> dict[str, Any]:
    results: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v
                                          for k, v in cfg.__dict__.items()}}
    if cfg.pushdown_only:
        rate = cfg.pushdown_rate or PUSHDOWN_DEFAULT_RATE
        console.print(f"9. pushdown: {cfg.pushdown_segments} segments, "
                      f"{cfg.pushdown_workers} workers, load {rate:.0f} events/s")
        results["pushdown"] = await pushdown(run, cfg.pushdown_segments, cfg.pushdown_workers,
                                             rate, cfg.pushdown_requests, cfg.clients)
        return results
    if cfg.long_tail_only:
        console.print(f"8. long tail: {cfg.long_tail_recommendations} recommendations in "
                      "families of 2-5 users, a fresh worker")
        results["long_tail"] = await long_tail_memory(run, cfg.long_tail_recommendations)
        return results
    if cfg.freshness_only:
        results["freshness_runs"] = await freshness_runs(cfg, run)
        return results
    n = cfg.events
    await _create_topic(run.bootstrap, run.topic, **run.kafka)
    console.print(f"producing {n} seeded events")
    records = list(seeded_events(n))
    results["event_bytes_avg"] = sum(len(r.value) for r in records) / len(records)
    await produce(run.bootstrap, run.topic, iter(records), total=n, kafka=run.kafka)

    console.print("0. pure aggregation (no Kafka): parse, apply, encode")
    results["pure_aggregation_events_per_s"] = pure_aggregation(records)
    console.print("1. raw aiokafka getmany")
    raw = await raw_consume(run.bootstrap, run.topic, n, **run.kafka)
    results["raw_events_per_s"] = raw
    del records

    console.print("2. ingest: one worker, cold start to zero lag")
    worker = WorkerProc(run, kafka_local.free_port())
    started = worker.start()
    ready = await worker.wait_ready()
    done = await wait_no_lag(run, timeout_s=900)
    ingest = n / (done - started)
    results["ingest_events_per_s"] = ingest
    results["ingest_over_raw"] = ingest / raw
    results["ingest_startup_s"] = ready - started
    results["ingest_after_ready_events_per_s"] = n / max(1e-9, done - ready)

    console.print(f"2b. ingest once ready, with and without {cfg.stream_clients} live streams "
                  "(alternating, other workers over the same events)")
    rates: dict[int, list[float]] = {0: [], cfg.stream_clients: []}
    for clients in (cfg.stream_clients, 0, 0, cfg.stream_clients):
        rates[clients].append(await ingest_with_streams(run, n, clients))
    with_streams = sum(rates[cfg.stream_clients]) / 2
    without = sum(rates[0]) / 2
    results["streams"] = {"clients": cfg.stream_clients, "with_events_per_s": with_streams,
                          "without_events_per_s": without, "ratio": with_streams / without}

    console.print("3. freshness at half the ingest rate")
    lat = await freshness(run, worker, ingest / 2, cfg.probes)
    results["freshness"] = {"rate_events_per_s": ingest / 2, **latency_figures(lat)}
    await wait_no_lag(run, timeout_s=600)

    console.print(f"4./5. api program: {cfg.api_segments} segments, "
                  f"{cfg.api_recommendations} recommendations")
    program = f"api-{run.app_id}"
    rss_before = worker.rss()
    api_recs = list(api_records(program, cfg.api_segments, cfg.api_recommendations, seed=5))
    t0 = time.perf_counter()
    await produce(run.bootstrap, run.topic, iter(api_recs), total=len(api_recs),
                  kafka=run.kafka)
    await wait_no_lag(run, timeout_s=1800)
    api_ingest = len(api_recs) / (time.perf_counter() - t0)
    held = len(api_recs)
    del api_recs
    await worker.wait_ready()

    console.print("5. memory")
    rss_busy = worker.rss()  # right after the API program's load
    # Then idle for a few seconds: what a worker holding these recommendations keeps (it
    # returns the allocator's free memory within ~2 s of going idle, streams/worker.py) and
    # the settled worker the API phases measure (the change publisher has published the
    # load's last changes by then).
    await asyncio.sleep(5.0)
    rss = worker.rss()
    total_recs = await worker.recommendations()  # all data sets: ingest, freshness, API
    results["memory"] = {"rss_bytes": rss, "recommendations_held": total_recs,
                         "rss_bytes_per_recommendation": rss / total_recs,
                         "rss_bytes_right_after_api_load": rss_busy,
                         "rss_bytes_per_recommendation_right_after_api_load":
                             rss_busy / total_recs,
                         "delta_bytes_per_api_recommendation": (rss - rss_before) / held}

    console.print("4. api latency")
    results["api"] = {
        "segments": cfg.api_segments, "recommendations": held,
        "ingest_events_per_s_incl_produce": api_ingest,
        "cached": await api_latency(worker, program, False, cfg.clients, cfg.api_requests),
        "force_refresh": await api_latency(worker, program, True, cfg.clients,
                                           max(cfg.clients, cfg.api_requests // 8)),
    }

    console.print("6. recovery")
    worker.stop()
    started = worker.start()
    ready = await worker.wait_ready(timeout_s=600)
    results["recovery"] = {"seconds_to_ready": ready - started,
                           "recommendations": total_recs}
    worker.stop()

    console.print("7. standby copies: two workers without, then with")
    rss_of = {}
    for replicas in (0, 1):
        rss_of[replicas] = await pair_rss(run, replicas)
    results["standby"] = {
        "recommendations": total_recs, "rss_bytes_without": rss_of[0],
        "rss_bytes_with": rss_of[1],
        "bytes_per_standby_recommendation": (rss_of[1] - rss_of[0]) / total_recs}

    console.print(f"8. long tail: {cfg.long_tail_recommendations} recommendations in families "
                  "of 2-5 users, a fresh worker")
    results["long_tail"] = await long_tail_memory(run, cfg.long_tail_recommendations)

    rate = cfg.pushdown_rate or ingest / 2
    console.print(f"9. pushdown: {cfg.pushdown_segments} segments, {cfg.pushdown_workers} "
                  f"workers, load {rate:.0f} events/s")
    results["pushdown"] = await pushdown(run, cfg.pushdown_segments, cfg.pushdown_workers,
                                         rate, cfg.pushdown_requests, cfg.clients)
    return results


async def long_tail_memory(run: Run, recs: int) -> dict[str, Any]:
    """A fresh worker's RSS, idle, once it holds ``recs`` recommendations in families of 2 to 5
    users (and, first, idle and empty: its fixed cost)."""
    own = dataclasses.replace(run, app_id=f"{run.app_id}-lt", input_topic="",
                              work=run.work / "long-tail")
    own.work.mkdir(parents=True, exist_ok=True)
    await _create_topic(own.bootstrap, own.topic, **own.kafka)
    worker = WorkerProc(own, kafka_local.free_port())
    worker.start()
    try:
        await worker.wait_ready()
        await asyncio.sleep(5.0)  # idle, as in phase 5
        rss_empty = worker.rss()
        records = list(long_tail_records(recs, seed=11))
        families = len({r.key for r in records})
        await produce(own.bootstrap, own.topic, iter(records), total=len(records),
                      kafka=own.kafka)
        del records
        await wait_no_lag(own, timeout_s=1800)
        await worker.wait_ready()
        # Idle: the change publisher has published the load's last changes (a million
        # recommendations in new families move hundreds of thousands of segments), then 5 s.
        await wait_changes_published(worker)
        await asyncio.sleep(5.0)
        rss = worker.rss()
        held = await worker.recommendations()
    finally:
        worker.stop()
    return {"recommendations_held": held, "families": families,
            "recommendations_per_family": held / families, "rss_bytes": rss,
            "rss_bytes_idle_empty": rss_empty, "rss_bytes_per_recommendation": rss / held,
            "delta_bytes_per_recommendation": (rss - rss_empty) / held}


async def wait_changes_published(worker: WorkerProc, quiet_s: float = 2.0,
                                  timeout_s: float = 300.0) -> None:
    """Until the worker's count of change events published has not moved for ``quiet_s``."""
    async def published(session: aiohttp.ClientSession) -> str:
        async with session.get(worker.url + "/metrics") as r:
            lines = (await r.text()).splitlines()
        return "".join(x for x in lines if x.startswith("segments_change_events_total"))

    deadline = time.perf_counter() + timeout_s
    async with aiohttp.ClientSession() as session:
        last = await published(session)
        quiet_since = time.perf_counter()
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.5)
            now = await published(session)
            if now != last:
                last, quiet_since = now, time.perf_counter()
            elif time.perf_counter() - quiet_since >= quiet_s:
                return


async def pair_rss(run: Run, replicas: int) -> int:
    """Both workers' RSS, idle, once they hold every partition (and, with ``replicas``, a
    ready copy of each) rebuilt from the changelogs of ``run``."""
    workers = []
    for i in range(2):
        own = dataclasses.replace(run, work=run.work / f"pair-{replicas}-{i}", extra_env={
            **run.extra_env, "SEGMENTS_STANDBY_REPLICAS": str(replicas)})
        own.work.mkdir(parents=True, exist_ok=True)
        workers.append(WorkerProc(own, kafka_local.free_port()))
    try:
        for w in workers:
            w.start()
        deadline = time.perf_counter() + 300
        async with aiohttp.ClientSession() as session:
            while True:
                bodies: list[dict[str, Any]] = []
                for w in workers:
                    try:
                        async with session.get(w.url + "/healthz") as resp:
                            if resp.status == 200:
                                bodies.append(await resp.json())
                    except aiohttp.ClientError:
                        pass
                if len(bodies) == len(workers):
                    owned = sum(len(b["partitions"]) for b in bodies)
                    copies = sum(len(b["standbys"]) for b in bodies)
                    if owned == PARTITIONS and copies == (PARTITIONS if replicas else 0):
                        break
                if time.perf_counter() > deadline:
                    logs = "\n".join(w.log_tail() for w in workers)
                    raise RuntimeError(f"the pair was not ready with {replicas} standby copies "
                                       f"({bodies}):\n{logs}")
                await asyncio.sleep(0.5)
        await asyncio.sleep(5.0)  # idle, as in phase 5
        return sum(w.rss() for w in workers)
    finally:
        for w in workers:
            w.stop()


async def ingest_with_streams(run: Run, n: int, clients: int) -> float:
    """Events/s from ready to zero lag over the topic's ``n`` events, with ``clients`` streams of
    the top segments of one program open on the worker meanwhile."""
    own = dataclasses.replace(run, app_id=f"{run.app_id}-s{uuid.uuid4().hex[:6]}",
                              input_topic=run.topic)
    worker = WorkerProc(own, kafka_local.free_port())
    worker.start()
    received = [0]

    async def read(session: aiohttp.ClientSession) -> None:
        params = {"program_id": "program-0", "min_weight": "0.5", "size": "50"}
        async with session.get(worker.url + "/segments/stream", params=params) as resp:
            async for _ in resp.content.iter_any():
                received[0] += 1

    try:
        ready = await worker.wait_ready()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            readers = [asyncio.create_task(read(session)) for _ in range(clients)]
            done = await wait_no_lag(own, timeout_s=900)
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        if clients and not received[0]:
            raise RuntimeError("the streams received nothing")
        return n / max(1e-9, done - ready)
    finally:
        worker.stop()


TARGETS = {
    "ingest_over_raw": (">=", 0.10), "freshness_p99_ms": ("<=", 150.0),
    "streams_ratio": (">=", 0.90),
    "api_force_refresh_p99_ms": ("<=", 100.0), "api_cached_p99_ms": ("<=", 10.0),
    "rss_bytes_per_recommendation": ("<=", 250.0), "recovery_seconds": ("<=", 30.0),
    "long_tail_rss_bytes_per_recommendation": ("<=", 400.0),
    "pushdown_force_refresh_p99_ms": ("<=", 50.0), "pushdown_cached_p99_ms": ("<=", 5.0),
}


def pushdown_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    p = r["pushdown"]
    head = (f"{p['segments']:,} segments, {p['workers']} workers, load "
            f"{p['load_events_per_s']:,.0f} ev/s")
    rows = []
    for page in (1, 50):
        lat, size = p[f"force_refresh_page_{page}"], p[f"peer_answer_bytes_page_{page}"]
        rows.append((f"pushdown force_refresh p50 / p99, page {page} of size 100 ({head})",
                     f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms", "p99 <= 50 ms"))
        rows.append((f"bytes per peer answer, page {page} ({size['rows_asked']:,} rows asked)",
                     f"{size['max']:,} B ({size['max_bytes_per_row_asked']:.0f} B a row); "
                     f"without a limit {size['without_limit_max']:,} B",
                     "<= page x size rows"))
    rows.append(("pushdown cached p50 / p99 (16 clients, pages 1-50)",
                 f"{p['cached']['p50_ms']:.1f} / {p['cached']['p99_ms']:.1f} ms", "p99 <= 5 ms"))
    for label in ("misses", "force_refresh"):
        s = p[f"sixteen_{label}"]
        rows.append((f"16 identical concurrent {label.replace('_', ' ')} to one worker: "
                     "computations (coalesced) per worker",
                     ", ".join(f"{c:.0f} ({j:.0f})" for c, j in zip(
                         s["computations_per_worker"], s["coalesced_per_worker"],
                         strict=True)),
                     "1 per worker" if label == "misses" else "reported"))
    rows.append(("503s asked again (partitions moving on a loaded machine)",
                 str(p.get("unavailable_answers_retried", 0)), "reported"))
    loops = [(name, p[key]) for name, key in (("page 1", "force_refresh_page_1"),
                                              ("page 50", "force_refresh_page_50"),
                                              ("cached", "cached"))
             if "livez_p50_ms" in p.get(key, {})]
    if loops:  # the event loop's own wait, against which the figures above are measured
        rows.append(("/livez p50 / p99 meanwhile (the workers' event loop wait)",
                     "; ".join(f"{name} {v['livez_p50_ms']:.1f} / {v['livez_p99_ms']:.1f} ms"
                               for name, v in loops), "reported"))
    return rows


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [
        ("pure aggregation (no Kafka, one core)",
         f"{r['pure_aggregation_events_per_s']:,.0f} events/s", "the code's own cost"),
        ("raw aiokafka getmany", f"{r['raw_events_per_s']:,.0f} events/s", "the limit"),
        ("ingest (1 worker, cold start to zero lag)", f"{r['ingest_events_per_s']:,.0f} events/s",
         ""),
        ("ingest / raw", f"{r['ingest_over_raw']:.3f}", ">= 0.10 (stretch 0.25)"),
        (f"ingest once ready with {r['streams']['clients']} live streams / without",
         f"{r['streams']['with_events_per_s']:,.0f} / {r['streams']['without_events_per_s']:,.0f}"
         f" events/s = {r['streams']['ratio']:.3f}", ">= 0.90"),
        ("freshness p50 / p99", f"{r['freshness']['p50_ms']:.0f} / "
         f"{r['freshness']['p99_ms']:.0f} ms", "p99 <= 150 ms"),
        ("API cached p50 / p99", f"{r['api']['cached']['p50_ms']:.1f} / "
         f"{r['api']['cached']['p99_ms']:.1f} ms, {r['api']['cached']['requests_per_s']:,.0f} "
         "req/s", "p99 <= 10 ms"),
        ("API force_refresh p50 / p99", f"{r['api']['force_refresh']['p50_ms']:.1f} / "
         f"{r['api']['force_refresh']['p99_ms']:.1f} ms, "
         f"{r['api']['force_refresh']['requests_per_s']:,.0f} req/s", "p99 <= 100 ms"),
        ("RSS per recommendation", f"{r['memory']['rss_bytes_per_recommendation']:.0f} B "
         f"idle 5 s after the API load, "
         f"{r['memory']['rss_bytes_per_recommendation_right_after_api_load']:.0f} B right "
         f"after it (delta {r['memory']['delta_bytes_per_api_recommendation']:.0f} B)",
         "<= 250 B"),
        *long_tail_rows(r),
        ("recovery to ready", f"{r['recovery']['seconds_to_ready']:.1f} s "
         f"({r['recovery']['recommendations']:,} recommendations)", "<= 30 s"),
        ("standby copy per recommendation (2 workers, RSS with - without copies)",
         f"{r['standby']['bytes_per_standby_recommendation']:.0f} B "
         f"({r['standby']['rss_bytes_without'] / 2**20:.0f} -> "
         f"{r['standby']['rss_bytes_with'] / 2**20:.0f} MiB)", "reported"),
    ]
    if "pushdown" in r:
        rows += pushdown_rows(r)
    return rows


def long_tail_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    lt = r["long_tail"]
    return [("RSS per recommendation, long tail (2-5 users per family, a fresh worker)",
             f"{lt['rss_bytes_per_recommendation']:.0f} B idle "
             f"({lt['recommendations_held']:,} recommendations in {lt['families']:,} "
             f"families; the worker idle before them {lt['rss_bytes_idle_empty'] / 2**20:.0f} "
             f"MiB, delta {lt['delta_bytes_per_recommendation']:.0f} B)", "<= 400 B")]


def freshness_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    f = r["freshness_runs"]
    target = TARGETS["freshness_p99_ms"][1]
    rows = [(f"freshness p50 / p99, run {i + 1} (load {f['rate_events_per_s']:,.0f} ev/s, half "
             f"the cold ingest rate)", f"{run['p50_ms']:.0f} / {run['p99_ms']:.0f} ms",
             f"p99 <= {target:.0f} ms") for i, run in enumerate(f["runs"])]
    p99s = [run["p99_ms"] for run in f["runs"]]
    if p99s:
        rows.append((f"freshness p99 over {len(p99s)} runs in a row",
                     f"{min(p99s):.0f}-{max(p99s):.0f} ms, "
                     f"{sum(p <= target for p in p99s)} of {len(p99s)} within the target",
                     f"all <= {target:.0f} ms"))
    return rows


def table_rows(cfg: BenchConfig, results: dict[str, Any]) -> list[tuple[str, str, str]]:
    if cfg.freshness_only:
        return freshness_rows(results)
    if cfg.pushdown_only:
        return pushdown_rows(results)
    return long_tail_rows(results) if cfg.long_tail_only else summary_rows(results)


def results_name(cfg: BenchConfig) -> str:
    return ("results-pushdown.json" if cfg.pushdown_only else
            "results-long-tail.json" if cfg.long_tail_only else
            "results-freshness.json" if cfg.freshness_only else "results.json")


def write_outputs(cfg: BenchConfig, results: dict[str, Any]) -> None:
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    name = results_name(cfg)
    (cfg.out_dir / name).write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "| measure | result | target |", "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in table_rows(cfg, results)],
    ]
    if cfg.pushdown_only:
        head = (f"Phase 9 alone (`segments bench --pushdown-only`), run {results['when']} on "
                f"{results['machine']}. Raw numbers: [{cfg.out_dir / name}]"
                f"({cfg.out_dir / name}).")
    elif cfg.long_tail_only:
        head = (f"Phase 8 alone (`segments bench --long-tail-only`), run {results['when']} on "
                f"{results['machine']}. Raw numbers: [{cfg.out_dir / name}]"
                f"({cfg.out_dir / name}).")
    elif cfg.freshness_only:
        head = (f"Phases 2 and 3 alone (`segments bench --freshness-only`), run "
                f"{results['when']} on {results['machine']}; {cfg.events:,} events ingested "
                f"first. Raw numbers: [{cfg.out_dir / name}]({cfg.out_dir / name}).")
    else:
        head = (f"Run {results['when']} on {results['machine']}; {cfg.events:,} events "
                f"(~{results['event_bytes_avg']:.0f} bytes each), API program with "
                f"{results['api']['segments']:,} segments / "
                f"{results['api']['recommendations']:,} recommendations, {cfg.clients} "
                f"concurrent clients. Raw numbers: "
                f"[{cfg.out_dir / name}]({cfg.out_dir / name}).")
    text = cfg.doc.read_text() if cfg.doc.exists() else "# Benchmarks\n"
    marker = ("bench-pushdown" if cfg.pushdown_only else
              "bench-long-tail" if cfg.long_tail_only else
              "bench-freshness" if cfg.freshness_only else "bench")
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    block = f"{start}\n{head}\n\n" + "\n".join(lines) + f"\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    cfg.doc.write_text(text)


def run_bench(cfg: BenchConfig) -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segments-bench-") as tmp:
        work = Path(tmp)
        broker_dir = work / "kafka"
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        own_broker = bootstrap is None
        redis = None
        try:
            if own_broker:
                console.print("starting a local Kafka broker")
                state, _ = kafka_local.start(port=kafka_local.free_port(), data_dir=broker_dir)
                bootstrap = state.bootstrap
            try:
                redis = RedisServer(work / "redis").start()
            except Exception as exc:  # no redis-server: the in-process cache is measured
                console.print(f"no Redis ({exc}); measuring the in-process cache")
            assert bootstrap is not None
            run = Run(bootstrap, work, redis.url if redis else None)
            if not own_broker:  # (a broker of its own is plaintext)
                run.kafka = client_options(KafkaSecurity.from_env(os.environ))
            results = asyncio.run(bench(cfg, run))
        finally:
            if redis is not None:
                redis.stop()
            if own_broker:
                kafka_local.stop(broker_dir)
    results["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["machine"] = f"{os.cpu_count()} cores, {platform.python_implementation()} " \
                         f"{platform.python_version()}, Kafka {kafka_local.KAFKA_VERSION}"
    results["cache"] = "redis" if redis is not None else "in-process"
    results["bench_seconds"] = time.perf_counter() - started
    results["targets"] = {k: f"{op} {v}" for k, (op, v) in TARGETS.items()}
    write_outputs(cfg, results)
    table = Table(title="segments bench")
    for col in ("measure", "result", "target"):
        table.add_column(col)
    for row in table_rows(cfg, results):
        table.add_row(*row)
    Console().print(table)
    print(f"results: {cfg.out_dir / results_name(cfg)}; table: {cfg.doc}; "
          f"{results['bench_seconds']:.0f} s")
    return 0
