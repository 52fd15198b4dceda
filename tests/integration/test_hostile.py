"""Hostile records, requests and faults against real `segments worker` processes, the real broker
and Redis: no record Kafka accepts, no request and no fault may stop a worker, lose an update
or grow its memory without bound.

Most cases share one deployment of two workers (a module fixture): each test writes its hostile
records among valid ones and checks what it proves (the dead letter, the worker alive); the
last test of that deployment checks every answer exactly against the oracle. Faults that
need a deployment of their own (a paused broker, an unavailable dead-letter topic, hostile
clients measured by RSS) come after.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
import redis
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.codec.keys import family_key
from streams.codec.partitioner import partition_for
from streams.codec.wire import encode_event
from streams.domain.events import Event
from streams.tools import kafka_local
from streams.tools.probes import partition_lags
from streams.tools.produce import Record, generate
from streams.tools.redis_local import RedisServer
from tests.support.dump import deployment_topics, dump_topics
from tests.support.faults import RssSampler, rss_summary
from tests.support.harness import (
    Cluster,
    Worker,
    feed,
    final_check,
    get_json,
    produce_records,
    read_topic_complete,
    rss,
    wait_no_lag,
    wait_ready,
)
from tests.support.oracle import Oracle

pytestmark = pytest.mark.integration

MB = 1 << 20
FINAL_RETRY_S = 60.0
NOW_MS = int(time.time() * 1000)


def log(msg: str) -> None:
    print(f"[hostile {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def event_doc(program: str, user: str, basis_id: str, weight: float | None, ts: int,
              **extra: Any) -> dict[str, Any]:
    return {"program_id": program, "user_id": user, "segment_basis": "label",
            "basis_id": basis_id, "name": f"Label {basis_id}", "action_type": "view",
            "weight": weight, "in_history": True, "ts": ts, **extra}


def keyed(doc: dict[str, Any], ts_ms: int, valid: bool = True) -> Record:
    """A record as a well-behaved producer writes it: keyed by its segment family."""
    key = family_key((doc["program_id"], doc["segment_basis"], doc["basis_id"],
                      doc["action_type"]))
    return Record(key, orjson.dumps(doc), ts_ms, valid)


async def send_raw(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None,
                                                                    list[tuple[str, bytes]]]],
                   partition: int | None = None) -> None:
    """Records exactly as given (null key and null value included: the Java client and kcat
    write those; aiokafka's ``send`` refuses them, its batches do not), up to the broker's
    maximum size."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 * MB,
                                acks="all")
    await producer.start()
    try:
        parts = sorted(await producer.partitions_for(topic))
        for i, (key, value, headers) in enumerate(records):
            batch = producer.create_batch()
            assert batch.append(key=key, value=value, timestamp=None, headers=headers)
            p = parts[i % len(parts)] if partition is None else partition
            await (await producer.send_batch(batch, topic, partition=p))
    finally:
        await producer.stop()


@dataclass
class Deployment:
    cluster: Cluster
    workers: list[Worker]
    oracle: Oracle
    session: aiohttp.ClientSession

    async def produce(self, records: list[Record]) -> None:
        self.oracle.feed(records)
        await produce_records(self.cluster.bootstrap, self.cluster.input_topic, records)

    async def dead_letters(self) -> list[Any]:
        return await read_topic_complete(self.cluster.bootstrap, self.cluster.dlq_topic)

    async def dead_letter_of(self, predicate: Any, timeout_s: float = 60.0) -> Any:
        """The first dead letter for which ``predicate(record)`` holds (waits for it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for r in await self.dead_letters():
                if predicate(r):
                    return r
            assert time.monotonic() < deadline, "no such dead letter"
            await asyncio.sleep(0.5)

    def alive(self) -> None:
        for w in self.workers:
            assert w.proc is not None and w.proc.poll() is None, (
                f"worker {w.port} stopped:\n{w.log()}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def hostile(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> AsyncIterator[Deployment]:
    run_dir = tmp_path_factory.mktemp("hostile")
    cluster = Cluster(kafka_bootstrap, run_dir)
    workers = [cluster.add_worker(), cluster.add_worker()]
    session = aiohttp.ClientSession()
    deployment = Deployment(cluster, workers, Oracle(), session)
    try:
        for w in workers:
            await wait_ready(w)
        await deployment.produce(list(generate(5_000, seed=1301, programs=2, users=800,
                                               base_ts=NOW_MS - 60_000)))
        yield deployment
    finally:
        await session.close()
        cluster.stop_all()


def headers_of(r: Any) -> dict[str, bytes]:
    return {k: bytes(v) for k, v in r.headers}


# -- records Kafka accepts ---------------------------------------------------------------------
@pytest.mark.asyncio(loop_scope="session")
async def test_a_null_key_and_null_value_is_a_dead_letter(hostile: Deployment) -> None:
    await send_raw(hostile.cluster.bootstrap, hostile.cluster.input_topic, [(None, None, [])])
    letter = await hostile.dead_letter_of(
        lambda r: r.key is None and headers_of(r).get("null-value") == b"true")
    assert letter.value == b"" and headers_of(letter)["error"] == b"null record value"
    hostile.alive()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_null_value_with_a_key_and_a_header_only_record(hostile: Deployment) -> None:
    await send_raw(hostile.cluster.bootstrap, hostile.cluster.input_topic,
                   [(b"null-with-key", None, []), (None, None, [("trace", b"abc")])])
    letter = await hostile.dead_letter_of(lambda r: r.key == b"null-with-key")
    assert letter.value == b"" and headers_of(letter)["null-value"] == b"true"
    assert {"source-topic", "source-partition", "source-offset"} <= set(headers_of(letter))

    def keyless_nulls(letters: list[Any]) -> int:
        return sum(r.key is None and headers_of(r).get("null-value") == b"true" for r in letters)

    deadline = time.monotonic() + 60
    while keyless_nulls(await hostile.dead_letters()) < 2:  # this one and the first test's
        assert time.monotonic() < deadline, "the header-only record has no dead letter"
        await asyncio.sleep(0.5)
    hostile.alive()


@pytest.mark.asyncio(loop_scope="session")
async def test_an_empty_value_is_a_dead_letter(hostile: Deployment) -> None:
    await send_raw(hostile.cluster.bootstrap, hostile.cluster.input_topic,
                   [(b"empty-value", b"", [])])
    letter = await hostile.dead_letter_of(lambda r: r.key == b"empty-value")
    assert letter.value == b"" and "null-value" not in headers_of(letter)
    hostile.alive()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_record_of_the_brokers_maximum_size_is_cut_to_fit(hostile: Deployment) -> None:
    value = b"\xfe" + os.urandom(1_020_000)  # not JSON; the broker takes up to ~1 MiB
    await send_raw(hostile.cluster.bootstrap, hostile.cluster.input_topic,
                   [(b"max-size", value, [])])
    letter = await hostile.dead_letter_of(lambda r: r.key == b"max-size")
    h = headers_of(letter)
    assert h["truncated"] == b"true" and h["original-size"] == str(len(value)).encode()
    assert value.startswith(letter.value) and len(letter.value) > 990_000
    hostile.alive()


@pytest.mark.asyncio(loop_scope="session")
async def test_an_invalid_value_repeated_in_the_error_is_cut_to_1_kib(
        hostile: Deployment) -> None:
    doc = event_doc("hostile-enum", "u1", "l1", 0.5, NOW_MS)
    doc["segment_basis"] = "x" * 600_000
    value = orjson.dumps(doc)
    await send_raw(hostile.cluster.bootstrap, hostile.cluster.input_topic,
                   [(b"huge-enum", value, [])])
    letter = await hostile.dead_letter_of(lambda r: r.key == b"huge-enum")
    h = headers_of(letter)
    assert letter.value == value and "truncated" not in h
    assert len(h["error"]) <= 1024 and b"segment_basis" in h["error"]
    hostile.alive()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_1_mb_key(hostile: Deployment) -> None:
    key = b"K" * 1_000_000
    await send_raw(hostile.cluster.bootstrap, hostile.cluster.input_topic,
                   [(key, b"{}", [])])
    letter = await hostile.dead_letter_of(lambda r: r.key is not None and r.key[:3] == b"KKK")
    h = headers_of(letter)
    assert h["key-truncated"] == b"true" and h["original-key-size"] == b"1000000"
    assert letter.value == b"{}"
    hostile.alive()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_microsecond_ts_is_refused_and_freezes_nothing(hostile: Deployment) -> None:
    bad = event_doc("hostile-ts", "u1", "l1", 0.9, NOW_MS * 1000)
    good = event_doc("hostile-ts", "u1", "l1", 0.3, NOW_MS)
    await hostile.produce([keyed(bad, NOW_MS, valid=False), keyed(good, NOW_MS)])
    letter = await hostile.dead_letter_of(lambda r: r.value == orjson.dumps(bad))
    assert b"$.ts" in headers_of(letter)["error"]
    status, body = await get_json(
        hostile.session, hostile.workers[0].url + "/segments",
        params={"min_weight": "0", "force_refresh": "true"}, headers={"program-id": "hostile-ts"})
    deadline = time.monotonic() + 30
    while status != 200 or not body["items"]:
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.5)
        status, body = await get_json(
            hostile.session, hostile.workers[0].url + "/segments",
            params={"min_weight": "0", "force_refresh": "true"},
            headers={"program-id": "hostile-ts"})
    assert body["items"][0]["strength"] == 0.3  # the later millisecond event applied


@pytest.mark.asyncio(loop_scope="session")
async def test_repartition_records_not_ours_are_dead_letters(hostile: Deployment) -> None:
    ev = Event("hostile-rep", "u1", "label", "l9", "Label 9", "view", 0.7, False, NOW_MS)
    owner = partition_for(family_key(ev.family), hostile.cluster.partitions)
    wrong = (owner + 1) % hostile.cluster.partitions
    await send_raw(hostile.cluster.bootstrap, hostile.cluster.repartition_topic,
                   [(b"wrong-partition", encode_event(ev, NOW_MS), [])], partition=wrong)
    await send_raw(hostile.cluster.bootstrap, hostile.cluster.repartition_topic,
                   [(b"not-ours", b"[1,2,3]", [])], partition=owner)
    letter = await hostile.dead_letter_of(lambda r: r.key == b"wrong-partition")
    assert f"of partition {owner} found on partition {wrong}".encode() in headers_of(
        letter)["error"]
    letter = await hostile.dead_letter_of(lambda r: r.key == b"not-ours")
    assert b"bad repartition record" in headers_of(letter)["error"]
    hostile.alive()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_50_mb_fetch_of_valid_records(hostile: Deployment) -> None:
    """Valid events with large ignored fields: ~50 MB that the workers fetch at once."""
    records = [keyed(event_doc("hostile-big", f"u{i}", f"l{i % 40}", (i % 100) / 100,
                               NOW_MS - 1000 + i, padding="p" * 100_000), NOW_MS)
               for i in range(500)]
    before = {w.port: rss(w) for w in hostile.workers}
    sampler = RssSampler(hostile.workers, every_s=0.2).start()
    await hostile.produce(records)
    await wait_no_lag(hostile.cluster, timeout_s=120)
    await sampler.stop()
    log(f"50 MB of valid records: RSS before {before}, {rss_summary(sampler)}")
    hostile.alive()
    for w in hostile.workers:
        assert rss(w) - before[w.port] < 200 * MB


@pytest.mark.asyncio(loop_scope="session")
async def test_the_internal_endpoint_validates_like_the_public_one(hostile: Deployment) -> None:
    base = {"program_id": "program-0", "segment_type": "growth", "segment_basis": "label"}
    for params, loc in [({**base, "min_weight": "nan"}, ["query", "min_weight"]),
                        ({**base, "min_weight": "inf"}, ["query", "min_weight"]),
                        ({**base, "min_weight": "-1"}, ["query", "min_weight"]),
                        ({**base, "segment_type": "all", "min_weight": "0.5"},
                         ["query", "segment_type"]),
                        ({"segment_type": "growth", "min_weight": "0.5"},
                         ["query", "program_id"])]:
        status, body = await get_json(hostile.session,
                                      hostile.workers[1].url + "/internal/segments",
                                      params=params)
        assert status == 422, (params, body)
        assert [e["loc"] for e in body["detail"]] == [loc]


@pytest.mark.asyncio(loop_scope="session")
async def test_malformed_changelog_records_are_skipped_on_recovery(hostile: Deployment) -> None:
    """Garbage on both changelogs (anyone can write there), then a third worker joins and
    leaves: every partition is rebuilt by a new owner at least once, which skips it."""
    c = hostile.cluster
    garbage: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (b'["g","label","l","view","u"]', b"not json", []),
        (b'["g","label","l","view","u2"]', b"[0.5,true,1,2]", []),  # wrong arity
        (b'["g","label","l","view","u3"]', b'[7.5,true,1,2,0,"n"]', []),  # weight out of range
        (b'["g","label","l","view","u4"]', b'[0.5,true,1,2,12345,"n"]', []),  # wrong partition
        (b"garbage key", b'[0.5,true,1,2,0,"n"]', []),
        (b'["g","label","l","view","u5"]', b"[" * 100_000, []),
    ]
    for p in range(c.partitions):
        await send_raw(c.bootstrap, f"{c.app_id}-recommendations-changelog", garbage,
                       partition=p)
        await send_raw(c.bootstrap, f"{c.app_id}-emitted-counts-changelog",
                       [(b'["g"]', b"[1]", []), (b'["g2"]', b'{"count": 1}', [])], partition=p)
    third = c.add_worker()
    hostile.workers.append(third)
    await wait_ready(third)
    for w in hostile.workers:
        await wait_ready(w)
    hostile.workers.remove(third)
    assert third.stop() == 0, third.log()
    for w in hostile.workers:
        await wait_ready(w)
    hostile.alive()
    logs = "".join(w.log_path.read_text(errors="replace") for w in [*hostile.workers, third])
    assert "skipped a malformed recommendations changelog record" in logs
    assert "skipped a malformed emitted-counts changelog record" in logs


@pytest.mark.asyncio(loop_scope="session")
async def test_after_all_of_it_every_answer_is_exact_and_the_workers_alive(
        hostile: Deployment) -> None:
    await wait_no_lag(hostile.cluster, timeout_s=240)
    try:
        report = await final_check(hostile.cluster, hostile.oracle, hostile.workers,
                                   timeout_s=FINAL_RETRY_S)
    except AssertionError as exc:
        cluster = hostile.cluster
        dumped = await dump_topics(cluster.bootstrap, deployment_topics(cluster.app_id),
                                   cluster.run_dir / "topics-dump", **cluster.kafka)
        raise AssertionError(f"{exc}\n{dumped}") from None
    hostile.alive()
    log(f"hostile records: final check {report}")


# -- faults that need a deployment of their own --------------------------------------------------
# A backlog that keeps both workers writing well past the pause's start (the broker is paused as
# soon as both are ready), and a pause four produce timeouts long.
PAUSE_EVENTS = 200_000
PAUSED_S = 8.0


async def test_a_broker_paused_longer_than_the_produce_timeout_loses_nothing(
        tmp_path: Path) -> None:
    """SIGSTOP the broker while the workers write a backlog's outputs, for longer than their
    produce timeout: the writes in flight fail, their batches are read again, nothing is lost
    and nothing counted twice."""
    data = tmp_path / "kafka"
    port = kafka_local.free_port()
    state, _ = await asyncio.to_thread(kafka_local.start, port, data)
    cluster = Cluster(state.bootstrap, tmp_path / "run",
                      extra_env={"SEGMENTS_PRODUCE_TIMEOUT_MS": "2000"})
    cluster.run_dir.mkdir()
    records = list(generate(PAUSE_EVENTS, seed=1401, programs=3, users=4000))
    oracle = Oracle()
    oracle.feed(records)
    workers: list[Worker] = []
    try:
        # A backlog first: once the workers are up, they are surely busy with it.
        await produce_records(state.bootstrap, cluster.input_topic, records)
        workers += [cluster.add_worker(), cluster.add_worker()]
        for w in workers:
            await wait_ready(w)
        os.kill(state.pid, signal.SIGSTOP)
        log(f"broker paused for {PAUSED_S:.0f}s")
        await asyncio.sleep(PAUSED_S)
        os.kill(state.pid, signal.SIGCONT)
        await wait_no_lag(cluster, timeout_s=300)
        report = await final_check(cluster, oracle, workers, timeout_s=FINAL_RETRY_S)
        logs = "".join(w.log() for w in workers)
        failed = sum(w.log_path.read_text(errors="replace").count("writes of a batch failed")
                     for w in workers)
        log(f"paused broker: {failed} failed batches read again; final check {report}")
        assert failed > 0, f"no write failed while the broker was paused:\n{logs}"
        for w in workers:
            assert w.proc is not None and w.proc.poll() is None, w.log()
    finally:
        with_broker = kafka_local.running_broker(data)
        if with_broker is not None:
            os.kill(with_broker.pid, signal.SIGCONT)
        cluster.stop_all()
        await asyncio.to_thread(kafka_local.stop, data)


async def _topic_config(bootstrap: str, topic: str, **configs: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


async def test_an_unavailable_dead_letter_topic_holds_its_records_back(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """A dead letter the DLQ topic cannot take (its max.message.bytes below any dead letter's
    size) is retried, not skipped: its partition's committed offset stays before it while the
    other partitions go on; once the topic takes it (cut to the topic's limit), everything is
    processed exactly."""
    cluster = Cluster(kafka_bootstrap, tmp_path)
    worker = cluster.add_worker()
    oracle = Oracle()
    try:
        await wait_ready(worker)
        await _topic_config(kafka_bootstrap, cluster.dlq_topic, **{"max.message.bytes": "1000"})
        poison = orjson.dumps({"program_id": "p", "junk": "j" * 5_000})
        before = [keyed(event_doc("dlq-down", f"u{i}", "l1", 0.6, NOW_MS), NOW_MS)
                  for i in range(20)]
        key = before[0].key
        assert key is not None
        held = partition_for(key, cluster.partitions)
        after = [keyed(event_doc("dlq-down", f"v{i}", "l1", 0.8, NOW_MS), NOW_MS)
                 for i in range(20)]
        others = list(generate(2_000, seed=1501, programs=1, users=300,
                               base_ts=NOW_MS - 60_000))
        records = [*before, Record(key, poison, NOW_MS, False), *after, *others]
        oracle.feed(records)
        await produce_records(kafka_bootstrap, cluster.input_topic, records)
        topics = [cluster.input_topic, cluster.repartition_topic]
        deadline = time.monotonic() + 60
        while True:  # every partition but the held one drains
            lags = await partition_lags(kafka_bootstrap, cluster.app_id, topics)
            behind = {(tp.topic, tp.partition) for tp, (done, end) in lags.items() if done < end}
            if behind == {(cluster.input_topic, held)}:
                break
            assert time.monotonic() < deadline, f"partitions behind: {behind}"
            await asyncio.sleep(0.5)
        await asyncio.sleep(3.0)  # and the held one stays held
        lags = await partition_lags(kafka_bootstrap, cluster.app_id, topics)
        done, end = lags[TopicPartition(cluster.input_topic, held)]
        assert done <= end - len(after) - 1, (done, end)
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()
        assert not await read_topic_complete(kafka_bootstrap, cluster.dlq_topic)
        assert "writes of a batch failed" in worker.log_path.read_text(errors="replace")
        await _topic_config(kafka_bootstrap, cluster.dlq_topic, **{"max.message.bytes": "4000"})
        await wait_no_lag(cluster, timeout_s=60)
        dead = await read_topic_complete(kafka_bootstrap, cluster.dlq_topic)
        assert len(dead) == 1 and poison.startswith(dead[0].value)
        assert headers_of(dead[0])["truncated"] == b"true"
        await final_check(cluster, oracle, [worker], timeout_s=FINAL_RETRY_S)
    finally:
        cluster.stop_all()


CLIENT_REQUESTS = 100_000
CLIENT_THRESHOLDS = 10_000
CLIENT_CONCURRENCY = 32


@pytest.mark.untimed  # 102,000 GETs and the RSS they leave: CPU-bound, no deadline
async def test_hostile_clients_do_not_grow_memory(kafka_bootstrap: str, tmp_path: Path) -> None:
    """100,000 GETs, each for a program of its own, over 10,000 distinct thresholds: memos and
    caches stay bounded (in-process cache, and Redis with near copies)."""
    server = RedisServer(tmp_path / "redis").start()
    cluster = Cluster(kafka_bootstrap, tmp_path, redis_url=server.url)
    port = kafka_local.free_port()
    env = cluster.env(port)
    del env["REDIS_URL"]  # the second worker caches in its own memory
    workers = [cluster.add_worker(), Worker(env, tmp_path / f"worker-{port}.log", port).start()]
    cluster.workers.append(workers[1])
    try:
        await feed(cluster, workers, list(generate(5_000, seed=1601, programs=2, users=500)))
        rng = random.Random(1602)
        queue: asyncio.Queue[tuple[Worker, str, str]] = asyncio.Queue()
        warm = 2_000
        for i in range(CLIENT_REQUESTS + warm):
            m = repr(rng.randrange(CLIENT_THRESHOLDS) / CLIENT_THRESHOLDS)
            queue.put_nowait((workers[i % 2], f"tenant-{i:06d}-{'x' * 100}", m))
        statuses: dict[int, int] = {}
        baseline: dict[int, int] = {}

        async def client(session: aiohttp.ClientSession) -> None:
            while not queue.empty():
                w, program, m = queue.get_nowait()
                async with session.get(w.url + "/segments", params={"min_weight": m},
                                       headers={"program-id": program}) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if not baseline and sum(statuses.values()) >= warm:
                    baseline.update({x.port: rss(x) for x in workers})

        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=CLIENT_CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(client(session) for _ in range(CLIENT_CONCURRENCY)))
        after = {w.port: rss(w) for w in workers}
        log(f"hostile clients: {sum(statuses.values())} GETs in "
            f"{time.monotonic() - started:.1f}s, statuses {statuses}, RSS after warm-up "
            f"{ {p: v // MB for p, v in baseline.items()} } MB, after "
            f"{ {p: v // MB for p, v in after.items()} } MB")
        assert statuses == {200: CLIENT_REQUESTS + warm}
        for w in workers:
            assert after[w.port] - baseline[w.port] < 50 * MB, (
                f"worker {w.port}: RSS {baseline[w.port] // MB} -> {after[w.port] // MB} MB")
        keys = redis.Redis.from_url(server.url).keys("*")
        assert keys and all(bytes(k).startswith(f"{cluster.app_id}:".encode()) for k in keys)
    finally:
        cluster.stop_all()
        server.stop()
