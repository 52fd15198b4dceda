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
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.kafka_local import free_port
from streams.produce import Record

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


async def produce_records(bootstrap: str, topic: str, records: list[Record]) -> None:
    from streams.produce import produce

    await produce(bootstrap, topic, iter(records), total=len(records))


async def topic_partitions(admin: AIOKafkaAdminClient, topic: str) -> list[int]:
    described = await admin.describe_topics([topic])
    return sorted(p["partition"] for d in described if d["error_code"] == 0
                  for p in d["partitions"])


async def group_lag(bootstrap: str, group: str, topics: list[str]) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        tps = [TopicPartition(t, p) for t in topics for p in await topic_partitions(admin, t)]
        if not tps:
            return 1
        ends = await consumer.end_offsets(tps)
        lag = 0
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag += max(0, ends[tp] - done)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


async def wait_no_lag(cluster: Cluster, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    topics = [cluster.input_topic, cluster.repartition_topic]
    lag = -1
    while time.monotonic() < deadline:
        lag = await group_lag(cluster.bootstrap, cluster.app_id, topics)
        if lag == 0:
            # one more commit interval so the last batch's state is surely applied
            await asyncio.sleep(1.5)
            if await group_lag(cluster.bootstrap, cluster.app_id, topics) == 0:
                return
        await asyncio.sleep(0.5)
    logs = "\n".join(w.log() for w in cluster.workers)
    raise AssertionError(f"consumer group {cluster.app_id} still has lag {lag}:\n{logs}")


async def read_topic(bootstrap: str, topic: str, timeout_s: float = 20.0
                     ) -> list[Any]:
    """Every record of ``topic`` from the beginning up to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
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
