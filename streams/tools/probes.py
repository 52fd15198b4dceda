"""Readiness probes shared by the demo, the benchmark and the tests: a worker's /healthz and a
consumer group's lag."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.runtime.kafka_clients import start_consumer
from streams.tools.exceptions import LocalServiceError


async def wait_http_ready(url: str, proc: subprocess.Popen[bytes] | None = None,
                          timeout_s: float = 120.0, poll_s: float = 0.05) -> float:
    """Poll ``url``/healthz until it answers 200; return the time.perf_counter() of that
    answer. Fails at once if ``proc`` exits."""
    deadline = time.perf_counter() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() < deadline:
            if proc is not None and proc.poll() is not None:
                raise LocalServiceError(f"the worker exited with {proc.returncode}")
            try:
                async with session.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return time.perf_counter()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(poll_s)
    raise LocalServiceError(f"the worker at {url} did not become ready in {timeout_s:.0f}s")


async def topic_partitions(admin: AIOKafkaAdminClient, topic: str) -> list[int]:
    described = await admin.describe_topics([topic])
    return sorted(p["partition"] for d in described if d["error_code"] == 0
                  for p in d["partitions"])


async def partition_lags(bootstrap: str, group: str, topics: list[str], **kafka: Any
                         ) -> dict[TopicPartition, tuple[int, int]]:
    """(committed offset, end offset) of consumer group ``group`` for each partition of
    ``topics`` (committed 0 where it has committed nothing). ``kafka``: security options."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **kafka)
    await admin.start()
    await start_consumer(consumer)
    try:
        committed = await admin.list_consumer_group_offsets(group)
        tps = [TopicPartition(t, p) for t in topics for p in await topic_partitions(admin, t)]
        ends = await consumer.end_offsets(tps) if tps else {}
        out = {}
        for tp in tps:
            meta = committed.get(tp)
            out[tp] = (meta.offset if meta is not None and meta.offset >= 0 else 0, ends[tp])
        return out
    finally:
        await consumer.stop()
        await admin.close()


async def group_lag(bootstrap: str, group: str, topics: list[str], **kafka: Any) -> int:
    """Records of ``topics`` not yet committed by consumer group ``group`` (1 if no topic
    exists yet, so that "0" always means caught up)."""
    lags = await partition_lags(bootstrap, group, topics, **kafka)
    if not lags:
        return 1
    return sum(max(0, end - done) for done, end in lags.values())
