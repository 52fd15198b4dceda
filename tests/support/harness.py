"""Test harness: workers as real OS processes (`segments worker`), lag checks, HTTP helpers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.codec.partitioner import partition_for
from streams.runtime.kafka_clients import start_consumer
from streams.tools.kafka_local import free_port
from streams.tools.probes import partition_lags, topic_partitions
from streams.tools.produce import Record
from tests.support.schemas import record_problems

SEGMENTS = str(Path(sys.executable).parent / "segments")


@dataclass
class Worker:
    env: dict[str, str]
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Worker:
        log = open(self.log_path, "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen([SEGMENTS, "worker"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


@dataclass
class Cluster:
    """Settings shared by the workers of one test (one app id, so one consumer group)."""

    bootstrap: str
    run_dir: Path
    redis_url: str | None = None
    partitions: int = 8
    app_id: str = field(default_factory=lambda: f"segtest-{uuid.uuid4().hex[:8]}")
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)
    # The security options of the test's own Kafka clients (streams/runtime/kafka_clients.py).
    kafka: dict[str, Any] = field(default_factory=dict)
    # Headers of the test's own HTTP requests (an API key).
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def input_topic(self) -> str:
        return f"{self.app_id}-in"

    @property
    def dlq_topic(self) -> str:
        return f"{self.app_id}-dlq"

    @property
    def changes_topic(self) -> str:
        return f"{self.app_id}-changes"

    @property
    def counts_topic(self) -> str:
        return f"{self.app_id}-counts"

    @property
    def repartition_topic(self) -> str:
        return f"{self.app_id}-recommendations-by-segment"

    def env(self, port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "SEGMENTS_APP_ID": self.app_id,
            "SEGMENTS_PARTITIONS": str(self.partitions),
            "SEGMENTS_INPUT_TOPIC": self.input_topic,
            "SEGMENTS_DLQ_TOPIC": self.dlq_topic,
            "SEGMENTS_CHANGES_TOPIC": self.changes_topic,
            "SEGMENTS_COUNTS_TOPIC": self.counts_topic,
            "SEGMENTS_WEB_PORT": str(port),
            "SEGMENTS_CHANGE_INTERVAL_MS": "300",
            "SEGMENTS_WATCH_THRESHOLDS": "0.5",
            "SEGMENTS_DATA_DIR": str(self.run_dir / f"worker-{port}"),
            "SEGMENTS_LOG_LEVEL": "INFO",
        })
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        else:
            env.pop("REDIS_URL", None)
        env.update(self.extra_env)
        return env

    def add_worker(self, port: int | None = None) -> Worker:
        port = port or free_port()
        w = Worker(self.env(port), self.run_dir / f"worker-{port}.log", port).start()
        self.workers.append(w)
        return w

    def stop_all(self) -> None:
        for w in self.workers:
            w.stop(30)


async def wait_ready(worker: Worker, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if worker.proc is not None and worker.proc.poll() is not None:
                raise AssertionError(f"worker exited ({worker.proc.returncode}):\n{worker.log()}")
            try:
                async with session.get(worker.url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    raise AssertionError(f"worker on {worker.port} not ready in {timeout_s}s:\n{worker.log()}")


async def produce_records(bootstrap: str, topic: str, records: list[Record],
                          **kafka: Any) -> None:
    from streams.tools.produce import produce

    await produce(bootstrap, topic, iter(records), total=len(records), kafka=kafka)


async def feed(cluster: Cluster, workers: list[Worker], records: list[Record],
               timeout_s: float = 600.0) -> None:
    """Once every one of ``workers`` is ready: ``records`` to the input, then until the group
    has handled them all."""
    for w in workers:
        await wait_ready(w)
    await produce_records(cluster.bootstrap, cluster.input_topic, records, **cluster.kafka)
    await wait_no_lag(cluster, timeout_s)


STUCK_S = 30.0


def _report_offsets(cluster: Cluster) -> None:
    """Each live worker logs its offsets report (SIGUSR1)."""
    for w in cluster.workers:
        if w.proc is not None and w.proc.poll() is None:
            w.proc.send_signal(signal.SIGUSR1)


async def _broker_view(cluster: Cluster, tps: list[TopicPartition]) -> str:
    """What a fresh consumer sees of the partitions a stalled group has not read: the leader
    and replicas the broker describes, and one fetch from the beginning (records, high-water
    mark), to tell a broker that does not serve them from a worker that does not ask."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap, **cluster.kafka)
    consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", **cluster.kafka)
    lines = []
    await admin.start()
    await start_consumer(consumer)
    try:
        described = await admin.describe_topics(sorted({tp.topic for tp in tps}))
        for d in described:
            for p in d["partitions"]:
                if TopicPartition(d["topic"], p["partition"]) in tps:
                    lines.append(f"  {d['topic']}[{p['partition']}]: leader {p['leader']}, "
                                 f"replicas {p['replicas']}, isr {p['isr']}")
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got = await consumer.getmany(*tps, timeout_ms=3000)
        for tp in tps:
            lines.append(f"  {tp.topic}[{tp.partition}]: a fresh consumer read "
                         f"{len(got.get(tp, []))} records from the beginning, high-water "
                         f"{consumer.highwater(tp)}, last stable {consumer.last_stable_offset(tp)}")
    except KafkaError as exc:
        lines.append(f"  (broker view failed: {exc!r})")
    finally:
        await consumer.stop()
        await admin.close()
    return "broker view of the partitions not read:\n" + "\n".join(lines)


async def wait_no_lag(cluster: Cluster, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    topics = [cluster.input_topic, cluster.repartition_topic]
    lag = -1
    caught_up: dict[TopicPartition, tuple[int, int]] | None = None
    # Lag unchanged for STUCK_S: each live worker logs its offsets report once (a stall's
    # evidence, in the worker logs that a failing test prints).
    last_lags: dict[TopicPartition, tuple[int, int]] | None = None
    moved = time.monotonic()
    reported = False
    while time.monotonic() < deadline:
        try:
            lags = await partition_lags(cluster.bootstrap, cluster.app_id, topics,
                                        **cluster.kafka)
            lag = sum(max(0, end - done) for done, end in lags.values()) if lags else 1
            if lags != last_lags:
                last_lags, moved = lags, time.monotonic()
            elif lag > 0 and not reported and time.monotonic() - moved > STUCK_S:
                reported = True
                _report_offsets(cluster)
                print(await _broker_view(cluster, sorted(
                    tp for tp, (done, end) in lags.items() if done != end)), flush=True)
            # Done when two reads in a row find every offset committed at the same end: a
            # commit follows the writes of its batch, so nothing is left in flight.
            if lag == 0 and lags == caught_up:
                return
            caught_up = lags if lag == 0 else None
        except KafkaError as exc:  # e.g. no coordinator yet, right after a broker restart
            lag = -1
            caught_up = None
            if not getattr(exc, "retriable", False):
                raise
        await asyncio.sleep(0.25)
    lags = await partition_lags(cluster.bootstrap, cluster.app_id, topics, **cluster.kafka)
    behind = "\n".join(f"  {tp.topic}[{tp.partition}]: committed {done}, end {end}"
                       for tp, (done, end) in sorted(lags.items()) if done != end)
    _report_offsets(cluster)
    await asyncio.sleep(1.0)
    logs = "\n".join(w.log() for w in cluster.workers)
    raise AssertionError(f"consumer group {cluster.app_id} still has lag {lag}:\n{behind}\n"
                         f"{logs}")


async def read_topic(bootstrap: str, topic: str, timeout_s: float = 20.0
                     ) -> list[Any]:
    """Every record of ``topic`` from the beginning up to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await start_consumer(consumer)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(admin, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                out.extend(msgs)
        return out
    finally:
        await consumer.stop()
        await admin.close()


async def get_json(session: aiohttp.ClientSession, url: str, **kwargs: Any
                   ) -> tuple[int, Any]:
    async with session.get(url, **kwargs) as resp:
        body = await resp.read()
        try:  # stdlib json: it keeps integers beyond 64 bits exact
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, body.decode(errors="replace")


# -- fault-test helpers: page walking, the exact final check, topic reads, RSS ----------------
# (used by tests/integration/test_faults.py; generic enough for any integration test)

def items_as_rows(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """GET /segments items as the oracle's row tuples."""
    return [(i["segment_type"], i["segment_basis"], i["segment_basis_id"], i["action_type"],
             i["name"], i["user_count"], i["strength"]) for i in items]


@dataclass
class PagesAnswer:
    """The outcome of walking every page of one GET /segments query."""

    status: int  # 200, or the status of the first page that was not 200
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    body: Any = None  # the body of the failing page (when status != 200)
    retry_after: str | None = None
    pages: int = 0


async def walk_pages(session: aiohttp.ClientSession, url: str, program: str, segment_type: str,
                     basis: str, m: float, *, refresh: bool = True, size: int = 100,
                     max_pages: int = 10_000, consistency: str = "any",
                     headers: dict[str, str] | None = None) -> PagesAnswer:
    """GET /segments page by page until ``total`` rows are read. Stops at the first page that
    is not a 200 and returns its status, body and Retry-After header. Transport errors
    (aiohttp.ClientError, TimeoutError) propagate to the caller."""
    out = PagesAnswer(200)
    page = 1
    while page <= max_pages:
        params = {"segment_type": segment_type, "segment_basis": basis + "s",
                  "min_weight": repr(m), "page": str(page), "size": str(size),
                  "force_refresh": "true" if refresh else "false", "consistency": consistency}
        async with session.get(url + "/segments", params=params,
                               headers={**(headers or {}), "program-id": program}) as resp:
            raw = await resp.read()
            out.pages += 1
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            if resp.status != 200:
                return PagesAnswer(resp.status, out.rows, body, resp.headers.get("Retry-After"),
                                   out.pages)
        out.rows.extend(items_as_rows(body["items"]))
        if page * size >= body["total"] or not body["items"]:
            return out
        page += 1
    raise AssertionError(f"{url}: more than {max_pages} pages for {program}/{segment_type}")


async def read_topic_complete(bootstrap: str, topic: str, timeout_s: float = 120.0,
                              **kafka: Any) -> list[Any]:
    """Every record of ``topic`` up to the end offsets seen at the start; unlike
    :func:`read_topic`, fails instead of returning a partial list on timeout."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, max_partition_fetch_bytes=4 << 20,
                                fetch_max_bytes=16 << 20, **kafka)
    await start_consumer(consumer)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka)
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(admin, topic)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while True:
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= ends[tp] for tp in tps):
                return out
            if time.monotonic() > deadline:
                missing = sum(max(0, ends[tp] - positions[tp]) for tp in tps)
                raise AssertionError(f"read only part of {topic}: {missing} records missing")
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, msgs in batch.items():
                out.extend(m for m in msgs if m.offset < ends[tp])
    finally:
        await consumer.stop()
        await admin.close()


Decoded = list[tuple[Any, dict[str, Any] | None]]  # (record, its value parsed; None: tombstone)


def decoded(records: list[Any]) -> Decoded:
    """Records of a topic keyed by segment in partition order, each value parsed once (the
    checks below read a hundred thousand of them)."""
    return [(r, None if r.value is None else orjson.loads(r.value))
            for r in sorted(records, key=lambda r: (r.partition, r.offset))]


def last_change_events(records: Decoded) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The latest change event per (program, type, basis, basis_id, action, min_weight), as a
    consumer keeps it (contract §4): the greatest ``version``, in partition order (the changes
    of one segment share its key, hence its partition); a record whose version is not greater
    than the one kept is dropped."""
    last: dict[tuple[Any, ...], dict[str, Any]] = {}
    for _, c in records:
        assert c is not None, "a change event is never a tombstone"
        key = (c["program_id"], c["segment_type"], c["segment_basis"], c["segment_basis_id"],
               c["action_type"], c["min_weight"])
        kept = last.get(key)
        if kept is None or c["version"] > kept["version"]:
            last[key] = c
    return last


@dataclass
class VersionedTable:
    """A topic keyed by segment read as a consumer of contract §4/§4b keeps it: per key, the
    record of the greatest ``version`` (a tombstone's is in its ``version`` header); a record
    whose version is not greater than the one kept is dropped (``late``)."""

    kept: dict[bytes, tuple[int, dict[str, Any] | None]] = field(default_factory=dict)
    late: int = 0  # records dropped: a version not greater than one seen before for the key
    problems: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, records: Decoded, partitions: int | None = None) -> VersionedTable:
        """``partitions``: the topic's, when every record must be on the partition Kafka's
        default partitioner gives its key."""
        table = cls()
        partition_of: dict[bytes, int] = {}  # (memo: murmur2 in Python, per key not record)
        segment_keys: dict[tuple[Any, ...], bytes] = {}  # (memo: json.dumps per record is slow)
        for r, value in records:
            if partitions is not None:
                partition = partition_of.get(r.key)
                if partition is None:
                    partition = partition_of[r.key] = partition_for(r.key, partitions)
                if r.partition != partition:
                    table.problems.append(f"{r.key!r} on partition {r.partition}")
            if value is None:
                header = dict(r.headers or ()).get("version")
                if header is None:
                    table.problems.append(f"tombstone of {r.key!r} without a version header")
                    continue
                version = int(header)
            else:
                version = value["version"]
                fields = (value["program_id"], value["segment_type"], value["segment_basis"],
                          value["segment_basis_id"], value["action_type"], value["min_weight"])
                want = segment_keys.get(fields)
                if want is None:
                    want = segment_keys[fields] = json.dumps(
                        list(fields), separators=(",", ":"), ensure_ascii=False).encode()
                if r.key != want:
                    table.problems.append(f"key {r.key!r} of value {value}")
            kept = table.kept.get(r.key)
            if kept is not None and version <= kept[0]:
                table.late += 1
                continue
            table.kept[r.key] = (version, value)
        return table

    @staticmethod
    def versions_follow_time(records: Decoded, slack_ms: int = 3_000) -> tuple[list[str], int]:
        """Change events (their ``ts`` is when they were published, one clock for all workers
        here): an event published ``slack_ms`` or more after another of the same key has a
        greater version, whoever published them; so a paused old owner's late writes (appended
        after the new owner's, published before them) never outrank the new owner's. Returns
        the problems and how many events came ``slack_ms`` or more after a later-published one
        on their partition (such late writes)."""
        by_key: dict[bytes, list[tuple[int, int]]] = {}
        newest: dict[int, int] = {}
        late = 0
        for r, c in records:
            assert c is not None, "a change event is never a tombstone"
            by_key.setdefault(r.key, []).append((c["ts"], c["version"]))
            if c["ts"] + slack_ms <= newest.get(r.partition, c["ts"]):
                late += 1
            newest[r.partition] = max(newest.get(r.partition, 0), c["ts"])
        problems = []
        for key, events in by_key.items():
            events.sort()
            before = -1  # the greatest version of events published slack_ms before this one
            i = 0
            for ts, version in events:
                while events[i][0] + slack_ms <= ts:
                    before = max(before, events[i][1])
                    i += 1
                if version <= before:
                    problems.append(f"{key!r}: version {version} published at {ts}, after "
                                    f"version {before} published {slack_ms} ms or more before")
        return problems, late

    def counts(self) -> dict[tuple[Any, ...], int]:
        """(program, type, basis, basis_id, action, min_weight) -> user_count, of the keys whose
        kept record is not a tombstone."""
        return {(v["program_id"], v["segment_type"], v["segment_basis"], v["segment_basis_id"],
                 v["action_type"], v["min_weight"]): v["user_count"]
                for _, v in self.kept.values() if v is not None}


@dataclass
class FinalCheckReport:
    seconds: float
    attempts: int
    unavailable: int  # 503 answers seen while waiting
    queries: int  # GET /segments queries (all pages) of the successful attempt
    change_events: int
    count_records: int = 0  # of segment-counts
    late_changes: int = 0  # records a consumer keeping the greatest version drops
    late_counts: int = 0
    late_writes: int = 0  # change events appended seconds after later-published ones


# GET /segments queries final_check has in flight at once: a worker computes one on a core while
# the others wait for peers or the network; more only queue on 2 cores.
QUERIES_AT_ONCE = 4


async def final_check(cluster: Cluster, oracle: Any, workers: list[Worker], *,
                      thresholds: tuple[float, ...] | None = None,
                      watched: tuple[float, ...] = (0.5,), check_changes: bool = True,
                      timeout_s: float = 60.0, settle_s: float = 1.0) -> FinalCheckReport:
    """After input stopped and the group has no lag: GET /segments (force_refresh, all pages) on
    EVERY worker in ``workers`` equals ``oracle`` for every program, type, basis and threshold;
    then the last change event per segment at each watched threshold equals its count (0 or no
    event at all for unlisted segments). Answers are asked with ``consistency=strict``: from the
    partitions' owners. 503s and mismatches are retried until ``timeout_s`` (workers may still
    be rebalancing or publishing their last changes); any other status fails at once."""
    from tests.support.oracle import THRESHOLDS, TYPES

    thresholds = thresholds or THRESHOLDS
    started = time.monotonic()
    deadline = started + timeout_s
    programs = sorted(oracle.programs())
    want = {(p, t, b, m): oracle.segments(p, t, b, m) for p in programs for t in TYPES
            for b in ("label", "asset") for m in sorted({*thresholds, *watched})}
    attempts = unavailable = 0
    problem = ""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            attempts += 1
            for w in workers:
                if w.proc is None or w.proc.poll() is not None:
                    raise AssertionError(f"worker {w.port} is not running:\n{w.log()}")
            problem, queries, seen_503 = await _ask_all(session, cluster, workers, want)
            unavailable += seen_503
            n_changes = 0
            if not problem and check_changes:
                await asyncio.sleep(settle_s)
                records = decoded(await read_topic_complete(
                    cluster.bootstrap, cluster.changes_topic, **cluster.kafka))
                n_changes = len(records)
                changes = VersionedTable.read(records, cluster.partitions)
                ordered, late_writes = VersionedTable.versions_follow_time(records)
                problem = "; ".join([*changes.problems, *ordered][:3]) or _changes_problem(
                    last_change_events(records), want, watched)
                # Every record written validates against schemas/ (contract 4c).
                problem = problem or "; ".join(record_problems(
                    [r for r, _ in records], "change", values=[v for _, v in records]))
                # A consumer of segment-counts from the beginning holds every listed segment at
                # every watched threshold, and nothing else (contract §4b).
                count_records = decoded(await read_topic_complete(
                    cluster.bootstrap, cluster.counts_topic, **cluster.kafka))
                counts = VersionedTable.read(count_records, cluster.partitions)
                problem = problem or "; ".join(counts.problems[:3]) or _counts_problem(
                    counts.counts(), want, watched) or "; ".join(record_problems(
                        [r for r, _ in count_records], "count",
                        values=[v for _, v in count_records]))
            if not problem:
                if not check_changes:
                    return FinalCheckReport(time.monotonic() - started, attempts, unavailable,
                                            queries, 0)
                return FinalCheckReport(time.monotonic() - started, attempts, unavailable,
                                        queries, n_changes, len(count_records), changes.late,
                                        counts.late, late_writes)
            if time.monotonic() > deadline:
                raise AssertionError(f"final check still failing after {timeout_s}s "
                                     f"({attempts} attempts): {problem}")
            await asyncio.sleep(1.0)


async def _ask_all(session: aiohttp.ClientSession, cluster: Cluster, workers: list[Worker],
                   want: dict[tuple[Any, ...], list[tuple[Any, ...]]]) -> tuple[str, int, int]:
    """Every query of ``want`` on every worker (all pages, strict), QUERIES_AT_ONCE at a time;
    none is started once one found a problem (the attempt is over). Returns the first problem
    in (worker, query) order ("" if none), the queries answered and the 503s among them."""
    from tests.support.oracle import assert_rows_equal

    jobs = iter(enumerate((w, query, rows) for w in workers for query, rows in want.items()))
    found: dict[int, str] = {}
    answered = unavailable = 0

    async def asker() -> None:
        nonlocal answered, unavailable
        for i, (w, (p, t, b, m), rows) in jobs:
            if found:
                return
            ans = await walk_pages(session, w.url, p, t, b, m, consistency="strict",
                                   headers=cluster.headers)
            answered += 1
            if ans.status == 503:
                unavailable += 1
                assert ans.retry_after, f"503 without Retry-After: {ans.body}"
                found[i] = f"{w.port}: 503 {ans.body}"
                return
            assert ans.status == 200, f"{w.port} {p}/{t}/{b}/{m}: {ans.status} {ans.body}"
            try:
                assert_rows_equal(ans.rows, rows, f"worker {w.port} {p}/{t}/{b}/{m}")
            except AssertionError as exc:
                found[i] = f"{exc}; {rows_diff(ans.rows, rows)}"
                return

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(QUERIES_AT_ONCE):
                group.create_task(asker())
    except ExceptionGroup as failed:  # the others are cancelled: raised as if asked in turn
        raise failed.exceptions[0] from None
    return (found[min(found)] if found else ""), answered, unavailable


def rows_diff(got: list[Any], want: list[tuple[Any, ...]], limit: int = 8) -> str:
    """Which segments differ (missing, extra, other count/strength/name), for messages."""
    g = {(r[2], r[3]): tuple(r) for r in got}
    w = {(r[2], r[3]): tuple(r) for r in want}
    missing = sorted(set(w) - set(g))
    extra = sorted(set(g) - set(w))
    other = sorted(k for k in set(g) & set(w) if g[k][4:6] != w[k][4:6])
    return (f"missing {[w[k] for k in missing[:limit]]} ({len(missing)}), "
            f"extra {[g[k] for k in extra[:limit]]} ({len(extra)}), "
            f"different {[(g[k], w[k]) for k in other[:limit]]} ({len(other)})")


def _counts_problem(got: dict[tuple[Any, ...], int],
                    want: dict[tuple[Any, ...], list[tuple[Any, ...]]],
                    watched: tuple[float, ...]) -> str:
    current = {(p, t, b, row[2], row[3], m): row[5] for (p, t, b, m), rows in want.items()
               if m in watched for row in rows}
    if got == current:
        return ""
    diff = sorted({k for k in {*got, *current} if got.get(k) != current.get(k)})
    return (f"segment-counts differs from GET /segments for {len(diff)} keys, e.g. "
            f"{[(k, got.get(k), current.get(k)) for k in diff[:5]]}")


def _changes_problem(last: dict[tuple[Any, ...], dict[str, Any]],
                     want: dict[tuple[Any, ...], list[tuple[Any, ...]]],
                     watched: tuple[float, ...]) -> str:
    current: dict[tuple[Any, ...], int] = {}
    for (p, t, b, m), rows in want.items():
        if m in watched:
            for row in rows:
                current[(p, t, b, row[2], row[3], m)] = row[5]
    for key, count in current.items():
        change = last.get(key)
        if change is None:
            return f"no change event for listed segment {key} (count {count})"
        if change["user_count"] != count:
            return f"last change of {key} says {change['user_count']}, GET says {count}"
    for key, change in last.items():
        if key[5] in watched and change["user_count"] != current.get(key, 0):
            return f"last change of unlisted segment {key} says {change['user_count']}, not 0"
    return ""


async def wait_ready_timed(worker: Worker, timeout_s: float = 120.0) -> float:
    """:func:`wait_ready`, returning how many seconds it took."""
    started = time.monotonic()
    await wait_ready(worker, timeout_s)
    return time.monotonic() - started


def rss(worker: Worker) -> int:
    """Resident set size of the worker process in bytes (0 if it is not running)."""
    import psutil

    if worker.proc is None or worker.proc.poll() is not None:
        return 0
    try:
        return int(psutil.Process(worker.proc.pid).memory_info().rss)
    except psutil.NoSuchProcess:
        return 0
