"""Fault injection on real worker processes, the real broker and Redis ("faults" tests).

Each test drives `segments worker` OS processes through one kind of failure while input
flows, then checks exactly, against the independent oracle, what every worker answers and
what the change topic says:

- crash: kill -9 a worker three times during the run, restarting it each time;
- scale: 1 -> 2 -> 3 workers and a graceful stop, with GET /segments load throughout;
- broker restart: the test's own Kafka broker stops for a few seconds mid-stream;
- Redis outage: Redis stops for a few seconds under request load;
- poison input: hostile records interleaved with valid ones; DLQ, exact counts, bounded RSS;
- late broker: a worker started before its broker waits, says so, and joins when it is up.

Event counts are scaled to this 2-core machine; input rates are set so that every fault falls
while input still flows, and no faster phase waits on a slower one for long. Each test prints
its figures (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis

from streams.tools import kafka_local
from streams.tools.probes import group_lag
from streams.tools.produce import BASE_TS, Record, generate, produce
from streams.tools.redis_local import RedisServer
from tests.support.faults import (
    LiveWorkers,
    LoadStats,
    RssSampler,
    exact_problem,
    interleave,
    nasty_records,
    rename_program,
    rss_summary,
    segment_poller,
)
from tests.support.harness import (
    Cluster,
    Worker,
    final_check,
    read_topic_complete,
    wait_no_lag,
    wait_ready,
    wait_ready_timed,
    walk_pages,
)
from tests.support.oracle import THRESHOLDS, TYPES, Oracle

pytestmark = pytest.mark.integration

MB = 1 << 20
# The final check retries (503s while the last rebalance settles, change events still being
# published) for this long; one full pass over 2 workers takes ~3-15 s here.
FINAL_RETRY_S = 30.0

# -- 1. crash -----------------------------------------------------------------------------------
# The issue asks for 200,000 events; the three kill -9 / restart cycles (each a session timeout,
# a rebalance and a table recovery) happen while they flow in at CRASH_RATE.
CRASH_EVENTS = 200_000
# The first ones go in at full speed; then a consumer of segment-counts starting from the
# beginning must hold exactly what GET /segments answers (contract §4b).
CRASH_FIRST = 100_000
CRASH_RATE = 2_500.0  # of the others, while the workers are killed
CRASH_KILLS = 3
CRASH_VICTIMS = (1, 0, 1)  # which of the two workers each kill hits
CRASH_WATCHED = (0.5, 0.8)


def log(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def produce_at(bootstrap: str, topic: str, records: list[Record], rate: float) -> int:
    return await produce(bootstrap, topic, iter(records), total=len(records), rate=rate)


async def test_crash_kill9_three_times(kafka_bootstrap: str, tmp_path: Path) -> None:
    started = time.monotonic()
    records = list(generate(CRASH_EVENTS, seed=101, programs=3, users=5000, late_ratio=0.05))
    first, rest = records[:CRASH_FIRST], records[CRASH_FIRST:]
    cluster = Cluster(kafka_bootstrap, tmp_path, extra_env={
        "SEGMENTS_WATCH_THRESHOLDS": ",".join(map(str, CRASH_WATCHED))})
    workers = [cluster.add_worker(), cluster.add_worker()]
    sampler = RssSampler(workers)  # sees the restarted workers too: the list is updated
    try:
        for w in workers:
            await wait_ready(w)
        sampler.start()
        await produce(kafka_bootstrap, cluster.input_topic, iter(first), total=len(first))
        await wait_no_lag(cluster, timeout_s=300.0)
        half = Oracle()
        half.feed(first)
        # A consumer starting now reads segment-counts from the beginning (final_check): it
        # holds GET /segments (= the oracle) at every watched threshold.
        bootstrap = await final_check(cluster, half, workers[:1], thresholds=CRASH_WATCHED,
                                      watched=CRASH_WATCHED, timeout_s=FINAL_RETRY_S)
        log(f"crash: after {len(first)} events, segment-counts as GET /segments: {bootstrap}")
        assert bootstrap.late_changes == bootstrap.late_counts == 0

        t0 = time.monotonic()
        producer = asyncio.create_task(
            produce_at(kafka_bootstrap, cluster.input_topic, rest, CRASH_RATE))
        duration = len(rest) / CRASH_RATE
        recoveries: list[float] = []
        for k in range(CRASH_KILLS):
            await asyncio.sleep(max(0.0, t0 + duration * (k + 1) / (CRASH_KILLS + 1)
                                    - time.monotonic()))
            i = CRASH_VICTIMS[k]
            victim = workers[i]
            victim.kill()
            log(f"kill -9 #{k + 1} of worker {victim.port} at {time.monotonic() - t0:.1f}s "
                f"(returncode {victim.proc.returncode if victim.proc else None})")
            workers[i] = cluster.add_worker(port=victim.port)
            recoveries.append(await wait_ready_timed(workers[i], 180.0))
            log(f"  restarted worker ready after {recoveries[-1]:.1f}s")
        sent = await producer
        produced_s = time.monotonic() - t0
        await wait_no_lag(cluster, timeout_s=300.0)
        drained_s = time.monotonic() - t0
        both_ready = 0.0
        for w in workers:
            both_ready = max(both_ready, await wait_ready_timed(w, 120.0))
        oracle = Oracle()
        oracle.feed(records)
        # Keeping the greatest version per key still equals GET /segments; and no record has a
        # version below one before it (the killed workers' records died with them).
        report = await final_check(cluster, oracle, workers, watched=CRASH_WATCHED,
                                   timeout_s=FINAL_RETRY_S)
        assert report.late_changes == report.late_counts == 0, report
        await sampler.stop()
        log(f"crash: {sent} events, {CRASH_KILLS} kills, produced in {produced_s:.1f}s, "
            f"no lag after {drained_s:.1f}s ({sent / drained_s:.0f} ev/s end to end), "
            f"recoveries (restart -> /healthz 200) {[round(r, 1) for r in recoveries]}s, "
            f"both ready {both_ready:.1f}s after the drain, "
            f"{rss_summary(sampler)}, final check {report}, "
            f"wall {time.monotonic() - started:.1f}s")
        assert sent == len(rest)
    finally:
        await sampler.stop()
        cluster.stop_all()


# -- 2. scale out and in under load -------------------------------------------------------------
# 1 -> 2 -> 3 workers, then a graceful stop; GET /segments load throughout. The issue names no
# count; SCALE_EVENTS at SCALE_RATE lasts long enough for the three transitions.
SCALE_EVENTS = 80_000
SCALE_RATE = 3_200.0
# Sent once the last transition is over, however late a slow machine makes it: input flows
# after each transition.
SCALE_TAIL = 4_000
FROZEN_EVENTS = 6_000  # a program that gets no input during the transitions: exact at any time
FROZEN_PROGRAM = "frozen-program"
POLLERS = 3


async def test_scale_out_and_in_under_load(kafka_bootstrap: str, tmp_path: Path) -> None:
    started = time.monotonic()
    frozen = rename_program(generate(FROZEN_EVENTS, seed=201, programs=1, users=1500),
                            FROZEN_PROGRAM)
    records = list(generate(SCALE_EVENTS, seed=202, programs=3, users=5000, late_ratio=0.05))
    frozen_oracle = Oracle()
    frozen_oracle.feed(frozen)
    oracle = Oracle()
    oracle.feed(frozen)
    oracle.feed(records)
    cluster = Cluster(kafka_bootstrap, tmp_path)
    first = cluster.add_worker()
    sampler = RssSampler(cluster.workers)
    live = LiveWorkers()
    stats = LoadStats()
    stop = asyncio.Event()
    pollers: list[asyncio.Task[None]] = []
    try:
        await wait_ready(first)
        await produce_at(kafka_bootstrap, cluster.input_topic, frozen, 0.0)
        await wait_no_lag(cluster)
        live.add(first)
        sampler.start()
        pollers = [asyncio.create_task(segment_poller(
            live, stats, stop, frozen={FROZEN_PROGRAM: frozen_oracle},
            streaming=sorted(oracle.programs() - {FROZEN_PROGRAM}), seed=i))
            for i in range(POLLERS)]
        t0 = time.monotonic()
        head, tail = records[:-SCALE_TAIL], records[-SCALE_TAIL:]
        producer = asyncio.create_task(
            produce_at(kafka_bootstrap, cluster.input_topic, head, SCALE_RATE))
        duration = len(head) / SCALE_RATE
        timeline: list[str] = []

        async def at(fraction: float) -> None:
            await asyncio.sleep(max(0.0, t0 + duration * fraction - time.monotonic()))

        await at(0.2)
        second = cluster.add_worker()
        live.add(second)
        timeline.append(f"+w2 at {time.monotonic() - t0:.1f}s, ready after "
                        f"{await wait_ready_timed(second):.1f}s")
        await at(0.45)
        third = cluster.add_worker()
        live.add(third)
        timeline.append(f"+w3 at {time.monotonic() - t0:.1f}s, ready after "
                        f"{await wait_ready_timed(third):.1f}s")
        await at(0.7)
        live.remove(second)
        t_stop = time.monotonic()
        code = await asyncio.to_thread(second.stop, 60.0)
        timeline.append(f"-w2 (SIGTERM) at {t_stop - t0:.1f}s, exited {code} after "
                        f"{time.monotonic() - t_stop:.1f}s")
        assert code == 0, second.log()
        t_rest = time.monotonic()
        for w in (first, third):
            await wait_ready(w)
        timeline.append(f"w1, w3 ready {time.monotonic() - t_rest:.1f}s after the stop")
        sent = await producer
        timeline.append(f"head of the input sent by {time.monotonic() - t0:.1f}s")
        sent += await produce_at(kafka_bootstrap, cluster.input_topic, tail, SCALE_RATE)
        await wait_no_lag(cluster, timeout_s=240.0)
        drained_s = time.monotonic() - t0
        stop.set()
        await asyncio.gather(*pollers)
        report = await final_check(cluster, oracle, [first, third], timeout_s=FINAL_RETRY_S)
        await sampler.stop()
        lat = sorted(stats.latencies)
        log(f"scale: {sent} events (+{len(frozen)} frozen), {'; '.join(timeline)}; "
            f"no lag after {drained_s:.1f}s; answers {dict(stats.statuses)}, "
            f"exact frozen checks {stats.exact_checks}, triples {stats.triples}, "
            f"live growth!=base+discovery {stats.live_identity_off}/"
            f"{stats.live_identity_checked} (informative), startup conn errors "
            f"{stats.startup_errors}, stopping-worker errors {stats.ignored_errors}, "
            f"p50/p99 {statistics.median(lat):.3f}/{lat[int(len(lat) * 0.99)]:.3f}s; "
            f"{rss_summary(sampler)}; final check {report}; "
            f"wall {time.monotonic() - started:.1f}s")
        assert not stats.violations, "\n".join(stats.violations)
        assert stats.statuses[200] > 0 and stats.exact_checks > 0
    finally:
        await sampler.stop()
        stop.set()
        for task in pollers:
            task.cancel()
        cluster.stop_all()


# -- 3. broker restart ----------------------------------------------------------------------------
# Own broker (not the session one). Phase 1 at BROKER_RATE (faster than the workers process, so
# they have a backlog), then the broker stops, stays down BROKER_DOWN_S, restarts on the same
# port and data dir; phase 2. GET /segments load on both workers throughout.
BROKER_EVENTS = 60_000
BROKER_RATE = 4_000.0
BROKER_DOWN_S = 5.0


async def test_broker_restart_mid_stream(tmp_path: Path) -> None:
    started = time.monotonic()
    data = tmp_path / "kafka"
    port = kafka_local.free_port()
    state, _ = await asyncio.to_thread(kafka_local.start, port, data)
    records = list(generate(BROKER_EVENTS, seed=301, programs=3, users=4000))
    oracle = Oracle()
    oracle.feed(records)
    half = len(records) // 2
    cluster = Cluster(state.bootstrap, tmp_path / "run")
    cluster.run_dir.mkdir()
    workers = [cluster.add_worker(), cluster.add_worker()]
    sampler = RssSampler(workers)
    live = LiveWorkers()
    stats = LoadStats()
    stop = asyncio.Event()
    pollers: list[asyncio.Task[None]] = []
    try:
        for w in workers:
            await wait_ready(w)
            live.add(w)
        sampler.start()
        pollers = [asyncio.create_task(segment_poller(
            live, stats, stop, frozen={}, streaming=sorted(oracle.programs()), seed=i,
            pause_s=0.2)) for i in range(2)]
        t0 = time.monotonic()
        await produce_at(state.bootstrap, cluster.input_topic, records[:half], BROKER_RATE)
        lag = await group_lag(state.bootstrap, cluster.app_id,
                              [cluster.input_topic, cluster.repartition_topic])
        t_down = time.monotonic()
        await asyncio.to_thread(kafka_local.stop, data)
        log(f"broker stopped at {t_down - t0:.1f}s with a backlog of {lag} events "
            f"(stop took {time.monotonic() - t_down:.1f}s)")
        during = dict(stats.statuses)
        await asyncio.sleep(BROKER_DOWN_S)
        during = {k: v - during.get(k, 0) for k, v in stats.statuses.items()}
        for w in workers:  # workers must ride out the outage: no restart here
            assert w.proc is not None and w.proc.poll() is None, (
                f"worker {w.port} died while the broker was down:\n{w.log()}")
        t_up = time.monotonic()
        state2, _ = await asyncio.to_thread(kafka_local.start, port, data)
        assert state2.port == port
        t_back = time.monotonic()
        log(f"broker back after {t_back - t_down:.1f}s (start took {t_back - t_up:.1f}s)")
        await wait_no_lag(cluster, timeout_s=240.0)
        backlog_s = time.monotonic() - t_back
        ready_after = 0.0
        for w in workers:
            ready_after = max(ready_after, await wait_ready_timed(w, 180.0))
        await produce_at(state.bootstrap, cluster.input_topic, records[half:], BROKER_RATE)
        await wait_no_lag(cluster, timeout_s=240.0)
        drained_s = time.monotonic() - t0
        stop.set()
        await asyncio.gather(*pollers)
        report = await final_check(cluster, oracle, workers, timeout_s=FINAL_RETRY_S)
        for w in workers:
            assert w.proc is not None and w.proc.poll() is None, w.log()
        await sampler.stop()
        log(f"broker restart: {len(records)} events, down {t_back - t_down:.1f}s, backlog "
            f"{lag} drained {backlog_s:.1f}s after the broker answered, both workers ready "
            f"{ready_after:.1f}s later, no lag after {drained_s:.1f}s; GET answers {during} "
            f"while down, {dict(stats.statuses)} in all; {rss_summary(sampler)}; "
            f"final check {report}; wall {time.monotonic() - started:.1f}s")
        assert not stats.violations, "\n".join(stats.violations)
    finally:
        await sampler.stop()
        stop.set()
        for task in pollers:
            task.cancel()
        cluster.stop_all()
        await asyncio.to_thread(kafka_local.stop, data)


# -- 4. Redis outage under request load ---------------------------------------------------------
REDIS_EVENTS = 20_000
# Long enough for several of the cache's 1 s back-offs, each ending in a failed try.
REDIS_DOWN_S = 6.0
REDIS_CLIENTS = 4
# Answers each phase (before, down, after) waits for: a few rounds of every client.
REDIS_PHASE_ANSWERS = 4 * REDIS_CLIENTS


async def redis_client(workers: list[Worker], want: dict[tuple[str, str, str, float],
                                                      list[tuple[object, ...]]],
                       stats: LoadStats, phase: list[str], per_phase: Counter[str],
                       stop: asyncio.Event, seed: int) -> None:
    """GET /segments in a loop (with and without force_refresh) on both workers; every answer
    must be a 200 equal to the oracle (a 503 with Retry-After is tolerated and counted)."""
    rng = random.Random(seed)
    keys = sorted(want)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        n = 0
        while not stop.is_set():
            w = workers[n % len(workers)]
            n += 1
            key = rng.choice(keys)
            refresh = rng.random() < 0.5
            t = time.monotonic()
            try:
                ans = await walk_pages(session, w.url, *key, refresh=refresh)
            except (aiohttp.ClientError, TimeoutError) as exc:
                stats.violate(f"{w.port} {key}: {exc!r} during {phase[0]}")
                await asyncio.sleep(0.2)
                continue
            stats.latencies.append(time.monotonic() - t)
            stats.statuses[ans.status] += 1
            per_phase[f"{phase[0]}:{ans.status}"] += 1
            if ans.status == 503 and ans.retry_after:
                await asyncio.sleep(0.1)
                continue
            if ans.status != 200:
                stats.violate(f"{w.port} {key} refresh={refresh}: {ans.status} {ans.body} "
                              f"during {phase[0]}")
                continue
            stats.exact_checks += 1
            problem = exact_problem(ans.rows, want[key])
            if problem:
                stats.violate(f"{w.port} {key} refresh={refresh} during {phase[0]}: {problem}")


async def answers_in(per_phase: Counter[str], phase: str, n: int, timeout_s: float = 30.0
                     ) -> None:
    """Until ``n`` answers (of any status) came back during ``phase``, or ``timeout_s``: the
    assertions on each phase's answers follow."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(v for k, v in per_phase.items() if k.startswith(phase + ":")) >= n:
            return
        await asyncio.sleep(0.1)


async def test_redis_outage_under_load(kafka_bootstrap: str, tmp_path: Path) -> None:
    started = time.monotonic()
    server = RedisServer(tmp_path / "redis").start()
    cluster = Cluster(kafka_bootstrap, tmp_path, redis_url=server.url)
    records = list(generate(REDIS_EVENTS, seed=401, programs=3, users=3000))
    oracle = Oracle()
    oracle.feed(records)
    want = {(p, t, b, m): oracle.segments(p, t, b, m) for p in sorted(oracle.programs())
            for t in TYPES for b in ("label", "asset") for m in THRESHOLDS}
    workers = [cluster.add_worker(), cluster.add_worker()]
    sampler = RssSampler(workers)
    stats = LoadStats()
    per_phase: Counter[str] = Counter()
    phase = ["before"]
    stop = asyncio.Event()
    clients: list[asyncio.Task[None]] = []
    client = redis.Redis.from_url(server.url)
    try:
        for w in workers:
            await wait_ready(w)
        await produce_at(kafka_bootstrap, cluster.input_topic, records, 0.0)
        await wait_no_lag(cluster)
        for w in workers:
            await wait_ready(w)
        sampler.start()
        clients = [asyncio.create_task(redis_client(workers, want, stats, phase, per_phase, stop,
                                                    seed=i)) for i in range(REDIS_CLIENTS)]
        await answers_in(per_phase, "before", REDIS_PHASE_ANSWERS)
        deadline = time.monotonic() + 15.0
        while not client.keys(f"{cluster.app_id}:*"):  # the first answers' writes land
            assert time.monotonic() < deadline, "the cache is in use before the outage"
            await asyncio.sleep(0.1)
        phase[0] = "down"
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(REDIS_DOWN_S)
        await answers_in(per_phase, "down", REDIS_PHASE_ANSWERS)
        phase[0] = "after"
        await asyncio.to_thread(server.start)
        client.close()
        client = redis.Redis.from_url(server.url)  # the restarted Redis starts empty
        t_back = time.monotonic()
        resumed = None
        while time.monotonic() - t_back < 15.0:
            if client.keys(f"{cluster.app_id}:*"):
                resumed = time.monotonic() - t_back
                break
            await asyncio.sleep(0.2)
        await answers_in(per_phase, "after", REDIS_PHASE_ANSWERS)
        stop.set()
        await asyncio.gather(*clients)
        for w in workers:
            assert w.proc is not None and w.proc.poll() is None, w.log()
        await sampler.stop()
        lat = sorted(stats.latencies)
        log(f"redis outage: {len(records)} events, {REDIS_CLIENTS} clients, down "
            f"{REDIS_DOWN_S:.0f}s; answers {dict(per_phase)}; exact checks "
            f"{stats.exact_checks}; cache keys back {resumed}s after restart; p50/p99 "
            f"{statistics.median(lat):.3f}/{lat[int(len(lat) * 0.99)]:.3f}s; "
            f"{rss_summary(sampler)}; wall {time.monotonic() - started:.1f}s")
        assert not stats.violations, "\n".join(stats.violations)
        assert resumed is not None, f"no {cluster.app_id}:* key in Redis 15 s after its restart"
        for p in ("before", "down", "after"):
            assert per_phase[f"{p}:200"] > 0, per_phase
    finally:
        await sampler.stop()
        stop.set()
        for task in clients:
            task.cancel()
        client.close()
        cluster.stop_all()
        server.stop()


# -- 5. poison input ------------------------------------------------------------------------------
# 20,000 records as the issue asks: generated ones (POISON_INVALID_RATIO of them invalid, every
# kind the contract names), hand-made hostile ones (random bytes, truncated JSON, wrong types,
# NaN, deep nesting, POISON_HUGE ~900 KB strings) and valid edge cases, some without a key
# (they take the repartition hop), all interleaved.
POISON_RECORDS = 20_000
POISON_NASTY = 3_000
POISON_KEYLESS = 500
POISON_HUGE = 12
POISON_INVALID_RATIO = 0.15
POISON_RATE = 2_500.0
RSS_LIMIT = 600 * MB


def keyless_events(samples: list[dict[str, object]], n: int) -> list[Record]:
    """Valid events of fresh users with no record key; each with its own ts later than every
    other event, so the order between the two paths cannot matter (and a record timestamp to
    match: a ts far after it is invalid)."""
    out = []
    for i in range(n):
        ts = BASE_TS + 50_000_000 + i
        doc = {**samples[i % len(samples)], "user_id": f"keyless-user-{i}", "ts": ts}
        out.append(Record(None, orjson.dumps(doc), ts, True))
    return out


async def test_poison_input(kafka_bootstrap: str, tmp_path: Path) -> None:
    started = time.monotonic()
    rng = random.Random(501)
    n_plain = POISON_RECORDS - POISON_NASTY - POISON_KEYLESS
    plain = list(generate(n_plain, seed=502, programs=3, users=3000,
                          invalid_ratio=POISON_INVALID_RATIO))
    samples = [{k: v for k, v in orjson.loads(r.value).items() if k != "ts"}
               for r in plain[:3000] if r.valid]
    extra = nasty_records(rng, samples, POISON_NASTY, huge=POISON_HUGE, base_ts=BASE_TS)
    extra += keyless_events(samples, POISON_KEYLESS)
    rng.shuffle(extra)
    records = interleave(rng, plain, extra)
    assert len(records) == POISON_RECORDS
    invalid = Counter(r.value for r in records if not r.valid)
    oracle = Oracle()
    oracle.feed(records)
    cluster = Cluster(kafka_bootstrap, tmp_path)
    workers = [cluster.add_worker(), cluster.add_worker()]
    sampler = RssSampler(workers, every_s=0.5)
    try:
        for w in workers:
            await wait_ready(w)
        sampler.start()
        t0 = time.monotonic()
        await produce_at(kafka_bootstrap, cluster.input_topic, records, POISON_RATE)
        await wait_no_lag(cluster, timeout_s=240.0)
        drained_s = time.monotonic() - t0
        await sampler.stop()
        for w in workers:
            assert w.proc is not None and w.proc.poll() is None, (
                f"worker {w.port} died on poison input:\n{w.log()}")

        dlq = await read_topic_complete(kafka_bootstrap, cluster.dlq_topic)
        got = Counter(m.value for m in dlq)
        missing, unexpected = invalid - got, got - invalid
        assert not missing and not unexpected, (
            f"DLQ: {sum(missing.values())} invalid records missing (e.g. "
            f"{[v[:120] for v in list(missing)[:5]]}), {sum(unexpected.values())} unexpected "
            f"(e.g. {[v[:120] for v in list(unexpected)[:5]]})")
        for m in dlq:
            reason = dict(m.headers).get("error", b"")
            assert reason.strip(), f"DLQ record without an error header: {m.value[:200]!r}"
        report = await final_check(cluster, oracle, workers, timeout_s=FINAL_RETRY_S)

        peak = sampler.peak()
        growth = {w.port: (sampler.at(0.5, w.port), sampler.at(1.0, w.port)) for w in workers}
        log(f"poison: {len(records)} records, {sum(invalid.values())} invalid "
            f"({POISON_HUGE} of ~900 KB), "
            f"{sum(r.valid for r in records)} valid, no lag after {drained_s:.1f}s, "
            f"DLQ {len(dlq)}, RSS peak {peak / MB:.0f} MB, mid/end "
            f"{ {p: (round(a / MB), round(b / MB)) for p, (a, b) in growth.items()} } MB, "
            f"final check {report}, wall {time.monotonic() - started:.1f}s")
        assert peak < RSS_LIMIT, f"RSS peak {peak / MB:.0f} MB"
        for port, (mid, end) in growth.items():
            assert end <= 2 * mid, f"worker {port}: RSS {mid / MB:.0f} -> {end / MB:.0f} MB"
    finally:
        await sampler.stop()
        cluster.stop_all()


# -- 6. a worker started before its broker ---------------------------------------------------------
async def test_worker_waits_for_the_broker(tmp_path: Path) -> None:
    """A worker started while no broker answers says so and waits; once the broker is up it
    joins, creates its topics and processes input, with no manual step."""
    data = tmp_path / "kafka"
    port = kafka_local.free_port()
    cluster = Cluster(f"127.0.0.1:{port}", tmp_path / "run")
    cluster.run_dir.mkdir()
    worker = cluster.add_worker()
    try:
        deadline = time.monotonic() + 30.0
        while "waiting for Kafka" not in worker.log() and time.monotonic() < deadline:
            assert worker.proc is not None and worker.proc.poll() is None, worker.log()
            await asyncio.sleep(0.2)
        assert f"waiting for Kafka at 127.0.0.1:{port}" in worker.log()
        await asyncio.sleep(3.0)
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()
        await asyncio.to_thread(kafka_local.start, port, data)
        waited = await wait_ready_timed(worker, 120.0)
        records = list(generate(3_000, seed=601, programs=2, users=500))
        oracle = Oracle()
        oracle.feed(records)
        await produce_at(cluster.bootstrap, cluster.input_topic, records, 0.0)
        await wait_no_lag(cluster, timeout_s=120.0)
        report = await final_check(cluster, oracle, [worker], timeout_s=FINAL_RETRY_S)
        log(f"late broker: worker ready {waited:.1f}s after the broker started; "
            f"final check {report}")
    finally:
        cluster.stop_all()
        await asyncio.to_thread(kafka_local.stop, data)
