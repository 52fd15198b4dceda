"""The deployment users grow into (contract §11, issue 23): 6 workers, 48 partitions, a
three-broker cluster, at least 3,000,000 recommendations. Under 20 reads/s and a steady input:

(a) a rolling restart of all six workers (SIGTERM, start again, wait until /readyz, next);
(b) a kill -9 of one worker while another is still rebuilding;
(c) a kill -9 of the broker leading most recommendations-changelog partitions, started again
    after 20 s.

Every read is a 200 (stale-flagged where it must be), the group converges within 60 s of the
last action, no worker process reads a changelog partition twice (a rebuild that starts over),
and the final answers are exact against the oracle (§2).

Not in `.ci/run` (it takes about 20 minutes here): `scripts/test.sh tests/scale -s`.
``SCALE_EVENTS`` (default 4,300,000 events, about 3.1 M recommendations) makes it smaller
for a try; ``SCALE_FINAL_WORKERS`` (default 2) is how many workers the final check asks
(each answers for every partition through its peers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.tools import kafka_local
from streams.tools.produce import Record, generate, produce
from tests.support.faults import LiveWorkers
from tests.support.harness import Cluster, Worker, final_check, wait_no_lag, wait_ready
from tests.support.oracle import THRESHOLDS, TYPES, Oracle

pytestmark = [pytest.mark.integration, pytest.mark.scale, pytest.mark.timeout(3600)]

EVENTS = int(os.environ.get("SCALE_EVENTS", "4300000"))
FINAL_WORKERS = int(os.environ.get("SCALE_FINAL_WORKERS", "2"))
WORKERS = 6
PARTITIONS = 48
PROGRAMS = 4
READERS = 4
READS_PER_S = 20.0  # all readers together
STEADY_RATE = 200.0  # events/s during the faults
STEADY_MAX = 200_000  # steady events generated; the producer stops once the faults are over
BROKER_DOWN_S = 20.0
CONVERGE_S = 60.0


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Reads:
    statuses: Counter[int] = field(default_factory=Counter)
    stale: int = 0
    ignored: int = 0  # errors from a worker taken out of the readers' list meanwhile
    violations: list[str] = field(default_factory=list)
    phase: str = "before the faults"  # which fault is under way, for the violations' reader

    def violate(self, msg: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(f"[{time.strftime('%H:%M:%S')} {self.phase}] {msg}")


async def reader(live: LiveWorkers, reads: Reads, stop: asyncio.Event, seed: int) -> None:
    """GET /segments (page 1, size 50; force_refresh every other time) on the live workers in
    turn at READS_PER_S / READERS a second: every answer must be a 200."""
    rng = random.Random(seed)
    period = READERS / READS_PER_S
    next_at = time.monotonic()
    turn = seed
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while not stop.is_set():
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if not live.workers:
                continue
            w = live.workers[turn % len(live.workers)]
            turn += 1
            params = {"segment_type": rng.choice(TYPES),
                      "segment_basis": rng.choice(("labels", "assets")),
                      "min_weight": str(rng.choice(THRESHOLDS)), "size": "50",
                      "force_refresh": "true" if turn % 2 else "false"}
            program = f"program-{rng.randrange(PROGRAMS)}"
            try:
                async with session.get(w.url + "/segments", params=params,
                                       headers={"program-id": program}) as resp:
                    body = await resp.read()
                    reads.statuses[resp.status] += 1
                    if resp.headers.get("Segments-Stale") == "true":
                        reads.stale += 1
                    if resp.status != 200:
                        reads.violate(f"{w.port} {program} {params}: {resp.status} "
                                      f"{body[:600]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                if live.live(w):
                    reads.violate(f"{w.port} {program} {params}: {exc!r}")
                else:
                    reads.ignored += 1


class Deployment:
    """The six workers; each incarnation of a worker logs to a file of its own, so that what
    one process read is told apart from what its successor read."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.ports = [kafka_local.free_port() for _ in range(WORKERS)]
        self.incarnations = [0] * WORKERS
        self.workers: list[Worker] = []
        self.live = LiveWorkers()
        self.logs: list[Path] = []

    def start(self, i: int) -> Worker:
        self.incarnations[i] += 1
        port = self.ports[i]
        env = self.cluster.env(port)
        env["SEGMENTS_INSTANCE_ID"] = f"w{i}"
        # (b) has two workers without a served state at once: with one copy a partition whose
        # owner is killed and whose copy sits on the rebuilding worker is found nowhere.
        env["SEGMENTS_STANDBY_REPLICAS"] = "2"
        path = self.cluster.run_dir / f"worker-{i}-{self.incarnations[i]}.log"
        w = Worker(env, path, port).start()
        self.logs.append(path)
        if i < len(self.workers):
            self.workers[i] = w
        else:
            self.workers.append(w)
        self.cluster.workers = list(self.workers)
        return w

    async def ready(self, i: int) -> float:
        """Seconds from now until worker ``i`` serves its partitions; it then takes reads."""
        t0 = time.monotonic()
        await wait_ready(self.workers[i], timeout_s=600.0)
        self.live.add(self.workers[i])
        return time.monotonic() - t0

    async def readyz(self, i: int) -> float:
        """Seconds from now until worker ``i``'s /readyz is 200 (its standby copies read too):
        what a rolling restart waits for before it stops the next worker."""
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.workers[i].url + "/readyz") as resp:
                        if resp.status == 200:
                            return time.monotonic() - t0
                assert time.monotonic() - t0 < 600.0, self.workers[i].log()
                await asyncio.sleep(0.3)

    def take_out(self, i: int) -> Worker:
        w = self.workers[i]
        self.live.remove(w)
        return w


async def first_answer(w: Worker, timeout_s: float = 600.0) -> float:
    """Seconds from now until ``w`` answers GET /segments with a 200 (stale or not)."""
    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() - t0 < timeout_s:
            try:
                async with session.get(w.url + "/segments",
                                       headers={"program-id": "program-0"}) as resp:
                    if resp.status == 200:
                        return time.monotonic() - t0
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"worker {w.port} never answered:\n{w.log()}")


async def converged(dep: Deployment, timeout_s: float) -> float:
    """Seconds from now until every worker is ready, the six own all partitions between them
    and none goes through a rebalance, for 5 s on end."""
    t0 = time.monotonic()
    last: list[int] = []
    good_since: float | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() - t0 < timeout_s + 5.0:
            owned: list[int] = []
            counts: list[int] = []
            ok = True
            for w in dep.workers:
                try:
                    async with session.get(w.url + "/healthz") as resp:
                        body = await resp.json()
                        ok = ok and resp.status == 200
                        owned += body.get("partitions", [])
                    async with session.get(w.url + "/metrics") as resp:
                        found = re.search(r"^segments_rebalances_total (\S+)$",
                                          await resp.text(), re.MULTILINE)
                        counts.append(int(float(found.group(1))) if found else -1)
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    ok = False
            now = time.monotonic()
            ok = ok and sorted(owned) == list(range(PARTITIONS)) and counts == last
            last = counts
            if not ok:
                good_since = None
            elif good_since is None:
                good_since = now
            elif now - good_since >= 5.0:
                return good_since - t0
            await asyncio.sleep(0.5)
    raise AssertionError(f"not converged within {timeout_s}s (rebalances {last})")


READ_LINE = re.compile(r"read (\d+) recommendations changelog records of partitions \[([\d, ]*)\]"
                       r" in ([\d.]+)s")


BACKGROUND_LINE = re.compile(r"partition (\d+) rebuilt in the background: (\d+) records in "
                             r"([\d.]+)s")


def rebuilds(path: Path) -> list[tuple[int, list[int], float]]:
    """(records, partitions, seconds) of every changelog read one worker process logged (in
    the assignment callback, or in the background: runtime/rebuilds.py)."""
    text = path.read_text(errors="replace")
    out = []
    for m in READ_LINE.finditer(text):
        parts = [int(p) for p in m.group(2).split(",") if p.strip()]
        out.append((int(m.group(1)), parts, float(m.group(3))))
    for m in BACKGROUND_LINE.finditer(text):
        out.append((int(m.group(2)), [int(m.group(1))], float(m.group(3))))
    return out


async def leaders(bootstrap: str, topic: str) -> Counter[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return Counter(p["leader"] for t in described for p in t["partitions"])


@pytest.fixture(scope="module")
def three_brokers(tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("kafka3")
    kafka_local.start_cluster(3, port=0, data_dir=data)
    failed = request.session.testsfailed
    try:
        yield data
    finally:
        kafka_local.stop_cluster(data)
        if request.session.testsfailed == failed:  # ~11 GB of logs; kept to read a failure
            shutil.rmtree(data, ignore_errors=True)


async def test_six_workers_48_partitions_three_brokers(three_brokers: Path,
                                                       tmp_path: Path) -> None:
    started = time.monotonic()
    state = kafka_local.read_cluster(three_brokers)
    assert state is not None
    bootstrap = state.bootstrap
    records = list(generate(EVENTS + STEADY_MAX, seed=2303, programs=PROGRAMS, users=500_000,
                            labels=1_000, assets=2_000, update_ratio=0.15, late_ratio=0.05))
    bulk, steady = records[:EVENTS], records[EVENTS:]
    log(f"generated {len(records)} events in {time.monotonic() - started:.0f}s")
    cluster = Cluster(bootstrap, tmp_path, partitions=PARTITIONS)
    dep = Deployment(cluster)
    reads = Reads()
    stop_reads = asyncio.Event()
    stop_input = asyncio.Event()
    readers: list[asyncio.Task[None]] = []
    sent = 0
    try:
        for i in range(WORKERS):
            dep.start(i)
        for i in range(WORKERS):
            await dep.ready(i)
        t0 = time.monotonic()
        await produce(bootstrap, cluster.input_topic, iter(bulk), total=len(bulk))
        await wait_no_lag(cluster, timeout_s=1800.0)
        loaded_s = time.monotonic() - t0
        async with aiohttp.ClientSession() as session:
            held = 0
            for w in dep.workers:
                async with session.get(w.url + "/healthz") as resp:
                    held += (await resp.json())["recommendations"]
        log(f"{len(bulk)} events in {loaded_s:.0f}s ({len(bulk) / loaded_s:.0f} ev/s end to "
            f"end): {held} recommendations held by the owners")
        assert held >= 3_000_000 or EVENTS < 4_300_000, held

        def steady_input() -> Iterator[Record]:
            for r in steady:
                if stop_input.is_set():
                    return
                yield r

        producing = asyncio.create_task(produce(bootstrap, cluster.input_topic, steady_input(),
                                                total=len(steady), rate=STEADY_RATE))
        readers = [asyncio.create_task(reader(dep.live, reads, stop_reads, seed=k))
                   for k in range(READERS)]

        # (a) rolling restart
        for i in range(WORKERS):
            reads.phase = f"(a) worker {i}"
            w = dep.take_out(i)
            t_stop = time.monotonic()
            assert w.stop(timeout_s=60.0) == 0, w.log()
            stopped_s = time.monotonic() - t_stop
            t_start = time.monotonic()
            new = dep.start(i)
            answer_s = await first_answer(new)
            ready_s = await dep.ready(i)
            served_s = time.monotonic() - t_start
            await dep.readyz(i)
            log(f"(a) worker {i}: stopped in {stopped_s:.1f}s, first answer "
                f"{answer_s:.1f}s, serving {served_s:.1f}s after its start "
                f"({ready_s:.1f}s after the first answer), /readyz (copies read) "
                f"{time.monotonic() - t_start:.1f}s; reads {dict(reads.statuses)}, "
                f"stale {reads.stale}")

        # (b) kill -9 of worker 4 while worker 3 rebuilds
        reads.phase = "(b)"
        w3 = dep.take_out(3)
        assert w3.stop(timeout_s=60.0) == 0, w3.log()
        rebuilding = dep.start(3)
        deadline = time.monotonic() + 120.0
        while "Executing _on_partitions_assigned" not in rebuilding.log_path.read_text(
                errors="replace"):
            assert time.monotonic() < deadline, rebuilding.log()
            await asyncio.sleep(0.05)
        victim = dep.take_out(4)
        victim.kill()
        log("(b) worker 4 killed (-9) while worker 3 rebuilds")
        dep.start(4)
        for i in (3, 4):
            log(f"(b) worker {i} ready after {await dep.ready(i):.1f}s")

        # (c) kill -9 of the broker leading most changelog partitions, back after 20 s
        reads.phase = "(c)"
        led = await leaders(bootstrap, f"{cluster.app_id}-recommendations-changelog")
        node_id, n_led = led.most_common(1)[0]
        node = state.nodes[node_id - 1]
        os.kill(node.pid, signal.SIGKILL)
        log(f"(c) broker {node_id} (leader of {n_led} of {PARTITIONS} changelog partitions) "
            f"killed (-9)")
        await asyncio.sleep(BROKER_DOWN_S)
        t_restart = time.monotonic()
        state = await asyncio.to_thread(kafka_local.restart_node, three_brokers, node_id)
        last_action = time.monotonic()
        log(f"(c) broker {node_id} back in {last_action - t_restart:.1f}s")

        reads.phase = "converging"
        converge_s = await converged(dep, CONVERGE_S)
        log(f"converged {converge_s:.1f}s after the last action")
        stop_input.set()
        sent = await producing
        stop_reads.set()
        await asyncio.gather(*readers)
        await wait_no_lag(cluster, timeout_s=600.0)

        restarted = {}
        for path in dep.logs:
            read = rebuilds(path)
            seen: Counter[int] = Counter(p for _, parts, _ in read for p in parts)
            again = sorted(p for p, n in seen.items() if n > 1)
            assert not again, f"{path.name} read changelog partitions {again} twice: {read}"
            restarted[path.name] = (sum(n for n, _, _ in read),
                                    round(sum(s for _, _, s in read), 1))
        log(f"changelog records read and seconds, per worker process: {restarted}")

        oracle = Oracle()
        oracle.feed(bulk)
        oracle.feed(steady[:sent])
        report = await final_check(cluster, oracle, dep.workers[:FINAL_WORKERS],
                                   thresholds=(0.5,), check_changes=False, timeout_s=120.0)
        log(f"scale: {len(bulk) + sent} events, reads {dict(reads.statuses)} (stale "
            f"{reads.stale}, ignored {reads.ignored}), final check {report}, wall "
            f"{time.monotonic() - started:.0f}s")
        assert not reads.violations, json.dumps(reads.violations, indent=1)
        assert converge_s <= CONVERGE_S
    finally:
        stop_input.set()
        stop_reads.set()
        for task in readers:
            task.cancel()
        cluster.workers = list(dep.workers)
        cluster.stop_all()
