"""Reads through failover (contract section 6) on real worker processes, the real broker and Redis.

2 and 3 workers (one standby copy of each partition), steady input, three pollers asking with
``consistency=any`` and three with ``strict``, all with ``force_refresh`` (so every read is
computed), never at a worker being faulted (a client behind a load balancer). Faults: kill -9
one worker, restart it; later SIGSTOP another for 15 s, then SIGCONT. What must hold:

- ``any``: at most 0.5 % of reads are not a 200 over the whole run;
- every 200 of the frozen program (no input during the run) equals the oracle exactly, in both
  modes: a standby copy is exact, not approximately right;
- ``any``: while an owner is down (every answer that came back in the first 4.5 s after each
  fault, before the session timeout could have moved its partitions) every 200 carries
  ``Segments-Stale: true`` and a ``Segments-Lag`` at least the records the input received
  since the fault on its partitions (acknowledged before the read was sent): the records it
  cannot reflect;
- ``strict``: never a stale answer (503 instead);
- after the faults, the exact final check on every worker, and of both count topics as a
  consumer keeping the greatest version per segment holds them (contract §4, §4b): no late
  write of the stopped worker outranks what the new owner published.

Each run prints its figures (reads served and failed per phase, time until answers are fresh
again); RELIABILITY.md quotes them.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.tools.produce import Record, generate
from streams.tools.redis_local import RedisServer
from tests.support.dump import deployment_topics, dump_topics
from tests.support.faults import exact_problem, rename_program
from tests.support.harness import (
    Cluster,
    Worker,
    feed,
    final_check,
    get_json,
    items_as_rows,
    wait_no_lag,
    wait_ready,
)
from tests.support.oracle import Oracle

pytestmark = pytest.mark.integration

FROZEN = "frozen-program"
FROZEN_EVENTS = 4_000
# At most this many: the input flows at LIVE_RATE during the whole run and stops once the last
# fault's phase is over (it lasts longer on a slower machine; the oracle takes what was sent).
LIVE_EVENTS = 40_000
LIVE_RATE = 400.0  # events/s
POLLERS = 3  # per consistency
# After a fault, before its partitions could move: the 6 s session counts from the member's
# last heartbeat, up to 1 s before the fault. An answer is judged by when it came back: one
# asked earlier may wait out a peer's timeout and be computed after the move (fresh, rightly).
WINDOW_S = 4.5
STOP_S = 15.0
MAX_FAILED = 0.005


def log(msg: str) -> None:
    print(f"[failover {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Read:
    mode: str
    sent: float  # monotonic
    status: int
    answered: float = 0.0  # monotonic: when its status and headers came back
    stale: bool = False
    lag: int = -1
    frozen: bool = False
    problem: str = ""


@dataclass
class Acks:
    """When each input record was acknowledged, by partition."""

    times: dict[int, list[float]] = field(default_factory=dict)

    def between(self, partitions: set[int], start: float, end: float) -> int:
        n = 0
        for p in partitions:
            ts = self.times.get(p, [])
            n += bisect.bisect_left(ts, end) - bisect.bisect_left(ts, start)
        return n


@dataclass
class Fault:
    name: str
    at: float
    partitions: set[int]
    fresh_after: float | None = None  # seconds until the first fresh (not stale) answer


async def produce_live(bootstrap: str, topic: str, records: list[Record], acks: Acks,
                       stop: asyncio.Event) -> int:
    """Send at LIVE_RATE, noting when each record was acknowledged and on which partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                enable_idempotence=True)
    await producer.start()
    sent = 0
    started = time.monotonic()

    def acked(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            acks.times.setdefault(future.result().partition, []).append(time.monotonic())

    try:
        pending = []
        for rec in records:
            if stop.is_set():
                break
            future = await producer.send(topic, rec.value, key=rec.key,
                                         timestamp_ms=rec.timestamp_ms)
            future.add_done_callback(acked)
            pending.append(future)
            sent += 1
            ahead = sent / LIVE_RATE - (time.monotonic() - started)
            if ahead > 0.005:
                await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def poller(mode: str, targets: list[Worker], reads: list[Read], frozen: Oracle,
                 live_programs: list[str], stop: asyncio.Event, seed: int) -> None:
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            if not targets:
                await asyncio.sleep(0.05)
                continue
            w = rng.choice(targets)
            program = FROZEN if rng.random() < 0.5 else rng.choice(live_programs)
            basis = rng.choice(("label", "asset"))
            segment_type = rng.choice(("growth", "base", "discovery"))
            m = rng.choice((0.0, 0.5, 0.731))
            params = {"segment_type": segment_type, "segment_basis": basis + "s",
                      "min_weight": repr(m), "size": "100", "force_refresh": "true",
                      "consistency": mode}
            sent = time.monotonic()
            read = Read(mode, sent, 0, frozen=program == FROZEN)
            try:
                async with session.get(w.url + "/segments", params=params,
                                       headers={"program-id": program}) as resp:
                    read.status = resp.status
                    read.answered = time.monotonic()
                    body = await resp.json() if resp.status == 200 else await resp.text()
                    read.stale = resp.headers.get("Segments-Stale") == "true"
                    if resp.status == 200:
                        read.lag = int(resp.headers["Segments-Lag"])
                    elif resp.status == 503 and "Retry-After" not in resp.headers:
                        read.problem = f"503 without Retry-After: {body}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                if w not in targets:  # faulted while the read was on its way: not counted
                    continue
                read.status = -1
                read.problem = f"{w.port}: {exc!r}"
            if read.status == 200 and program == FROZEN:
                want = frozen.segments(FROZEN, segment_type, basis, m)
                problem = exact_problem(items_as_rows(body["items"]), want[:100])
                if body["total"] != len(want) or problem:
                    read.problem = (f"{w.port} {mode} {segment_type}/{basis}/{m}: "
                                    f"{body['total']} segments (oracle {len(want)}) {problem}")
            if read.status == 200 and mode == "strict" and read.stale:
                read.problem = f"{w.port}: a stale answer with consistency=strict"
            reads.append(read)
            await asyncio.sleep(0.1)


async def standbys_ready(workers: list[Worker], partitions: int, timeout_s: float = 60.0
                         ) -> None:
    """Until every partition has a ready standby copy somewhere."""
    deadline = time.monotonic() + timeout_s
    covered: set[int] = set()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            covered = set()
            for w in workers:
                status, body = await get_json(session, w.url + "/healthz")
                if status == 200:
                    covered.update(body["standbys"])
            if covered == set(range(partitions)):
                return
            await asyncio.sleep(0.3)
    raise AssertionError(f"standby copies of {sorted(covered)} only")


async def owned(worker: Worker) -> set[int]:
    async with aiohttp.ClientSession() as session:
        _, body = await get_json(session, worker.url + "/healthz")
    return set(body["partitions"])


def phase_figures(reads: list[Read], start: float, end: float) -> str:
    out = []
    for mode in ("any", "strict"):
        rs = [r for r in reads if r.mode == mode and start <= r.sent < end]
        ok = sum(r.status == 200 for r in rs)
        stale = sum(r.status == 200 and r.stale for r in rs)
        out.append(f"{mode}: {ok}/{len(rs)} served ({stale} stale)")
    return ", ".join(out)


async def diagnosis(workers: list[Worker], oracle: Oracle, partitions: int) -> str:
    """Which partition, held where, differs from the oracle (growth, labels, 0.0, per program):
    each worker's own partitions and standby copies, asked one partition at a time."""
    from streams.codec.keys import family_key
    from streams.codec.partitioner import partition_for

    lines = []
    async with aiohttp.ClientSession() as session:
        for program in sorted(oracle.programs()):
            want: dict[int, dict[tuple[str, str], int]] = {}
            for row in oracle.segments(program, "growth", "label", 0.0):
                p = partition_for(family_key((program, "label", row[2], row[3])), partitions)
                want.setdefault(p, {})[(row[2], row[3])] = row[5]
            for w in workers:
                _, health = await get_json(session, w.url + "/healthz")
                for p in range(partitions):
                    role = ("owner" if p in health.get("partitions", []) else
                            "standby" if p in health.get("standbys", []) else None)
                    if role is None:
                        continue
                    status, body = await get_json(session, w.url + "/internal/segments", params={
                        "program_id": program, "segment_type": "growth",
                        "segment_basis": "label", "min_weight": "0.0", "partitions": str(p),
                        "any": "true"})
                    if status != 200:
                        lines.append(f"{w.port} p{p} ({role}): {status}")
                        continue
                    got = {(r[2], r[3]): r[5] for r in body["items"]}
                    expected = want.get(p, {})
                    off = {k for k in expected.keys() | got.keys()
                           if expected.get(k) != got.get(k)}
                    if off:
                        sample = [(k, got.get(k), expected.get(k)) for k in sorted(off)[:3]]
                        lines.append(f"{w.port} p{p} ({role}) {program}: {len(off)} of "
                                     f"{len(expected)} segments differ, e.g. {sample}")
    return "diagnosis:\n" + ("\n".join(lines) or "every partition everywhere as the oracle")


@pytest.mark.parametrize("n_workers", [2, 3])
async def test_reads_survive_a_kill_and_a_stop(kafka_bootstrap: str, redis_server: RedisServer,
                                               tmp_path: Path, n_workers: int) -> None:
    started = time.monotonic()
    frozen_records = rename_program(
        generate(FROZEN_EVENTS, seed=601, programs=1, users=800), FROZEN)
    live_records = list(generate(LIVE_EVENTS, seed=602 + n_workers, programs=2, users=3000))
    frozen = Oracle()
    frozen.feed(frozen_records)
    live_programs = sorted({orjson.loads(r.value)["program_id"] for r in live_records})
    cluster = Cluster(kafka_bootstrap, tmp_path, redis_url=redis_server.url)
    workers = [cluster.add_worker() for _ in range(n_workers)]
    targets: list[Worker] = []
    reads: list[Read] = []
    faults: list[Fault] = []
    acks = Acks()
    stop_input, stop_reads = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    stopped: Worker | None = None
    try:
        await feed(cluster, workers, frozen_records, timeout_s=120)
        await standbys_ready(workers, cluster.partitions)
        targets.extend(workers)
        t0 = time.monotonic()
        producer = asyncio.create_task(produce_live(
            kafka_bootstrap, cluster.input_topic, live_records, acks, stop_input))
        tasks = [asyncio.create_task(poller(mode, targets, reads, frozen, live_programs,
                                            stop_reads, seed=i))
                 for i, mode in enumerate(["any"] * POLLERS + ["strict"] * POLLERS)]
        await asyncio.sleep(5)

        victim = workers[1]  # kill -9, then a restart
        parts = await owned(victim)
        targets.remove(victim)
        victim.kill()
        faults.append(Fault(f"kill -9 of worker {victim.port}", time.monotonic(), parts))
        log(f"{n_workers} workers: killed {victim.port} (partitions {sorted(parts)}) at "
            f"{faults[-1].at - t0:.1f}s")
        await asyncio.sleep(WINDOW_S + 4)  # the session expires, its partitions move
        workers[1] = cluster.add_worker(port=victim.port)
        await wait_ready(workers[1], 120)
        targets.append(workers[1])
        log(f"  restarted worker ready at {time.monotonic() - t0:.1f}s")
        await asyncio.sleep(4)

        stopped = workers[0]  # SIGSTOP for 15 s, then SIGCONT
        assert stopped.proc is not None
        parts = await owned(stopped)
        targets.remove(stopped)
        os.kill(stopped.proc.pid, signal.SIGSTOP)
        faults.append(Fault(f"SIGSTOP of worker {stopped.port}", time.monotonic(), parts))
        log(f"  stopped {stopped.port} (partitions {sorted(parts)}) at "
            f"{faults[-1].at - t0:.1f}s")
        await asyncio.sleep(STOP_S)
        os.kill(stopped.proc.pid, signal.SIGCONT)
        resumed = stopped
        stopped = None
        await wait_ready(resumed, 120)
        targets.append(resumed)
        log(f"  continued; ready again at {time.monotonic() - t0:.1f}s")
        await asyncio.sleep(3)

        stop_input.set()
        sent = await producer
        oracle = Oracle()
        oracle.feed(frozen_records + live_records[:sent])
        stop_reads.set()
        await asyncio.gather(*tasks)
        end = time.monotonic()
        await wait_no_lag(cluster, timeout_s=180)
        try:
            # Also: the stopped worker's late writes (queued when it stopped, appended after
            # the new owner's) never carry a version above the new owner's for their segment,
            # and the greatest version per key of both count topics equals GET /segments.
            report = await final_check(cluster, oracle, workers, timeout_s=60)
        except AssertionError as exc:
            dumped = await dump_topics(kafka_bootstrap, deployment_topics(cluster.app_id),
                                       tmp_path / "topics-dump")
            raise AssertionError(f"{exc}\n{await diagnosis(workers, oracle, cluster.partitions)}"
                                 f"\n{dumped}") from None

        # -- what the readers saw ------------------------------------------------------------
        problems = [r.problem for r in reads if r.problem]
        any_reads = [r for r in reads if r.mode == "any"]
        failed = [r for r in any_reads if r.status != 200]
        for k, fault in enumerate(faults):
            phase_end = faults[k + 1].at if k + 1 < len(faults) else end
            after = [r for r in any_reads if r.sent >= fault.at and r.status == 200]
            fresh = next((r for r in after if not r.stale), None)
            fault.fresh_after = None if fresh is None else fresh.sent - fault.at
            window = [r for r in after if r.answered <= fault.at + WINDOW_S]
            for r in window:
                if not r.stale:
                    problems.append(f"{fault.name}: a fresh answer {r.sent - fault.at:.2f}s "
                                    f"after it")
                due = acks.between(fault.partitions, fault.at, r.sent)
                if r.lag < due:
                    problems.append(f"{fault.name}: Segments-Lag {r.lag} at "
                                    f"{r.sent - fault.at:.2f}s, but {due} records came since "
                                    f"on its partitions")
            first = phase_figures(reads, fault.at, fault.at + WINDOW_S)
            log(f"  {fault.name}: first {WINDOW_S:g}s {first}; whole phase "
                f"({phase_end - fault.at:.0f}s, restart included) "
                f"{phase_figures(reads, fault.at, phase_end)}; first fresh answer after "
                f"{fault.fresh_after and round(fault.fresh_after, 1)}s")
        statuses = Counter((r.mode, r.status) for r in reads)
        log(f"{n_workers} workers: {sent} events, {len(reads)} reads over "
            f"{end - t0:.0f}s ({dict(sorted(statuses.items()))}); any: {len(failed)} not 200 "
            f"({len(failed) / max(1, len(any_reads)):.2%}), "
            f"{sum(r.stale for r in any_reads if r.status == 200)} stale; "
            f"frozen exact checks {sum(r.frozen and r.status == 200 for r in reads)}; "
            f"final check {report}; wall {time.monotonic() - started:.0f}s")
        assert not problems, "\n".join(problems[:20])
        assert len(failed) <= MAX_FAILED * len(any_reads), Counter(r.status for r in failed)
        assert all(f.fresh_after is not None for f in faults)
        assert sum(r.mode == "strict" and r.status == 200 for r in reads) > 0
        assert sent < LIVE_EVENTS, "the input ran out before the last fault's phase was over"
    except BaseException:
        for w in cluster.workers:  # each live worker logs its offsets and tasks
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGCONT)
                w.proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(1.5)
        raise
    finally:
        stop_input.set()
        stop_reads.set()
        for task in tasks:
            task.cancel()
        if stopped is not None and stopped.proc is not None:
            os.kill(stopped.proc.pid, signal.SIGCONT)
        cluster.stop_all()
