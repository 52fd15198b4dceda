"""Topics are checked at start (contract section 11): an input topic of any partition count is
counted exactly; an internal topic of another partition count stops the worker with exit code 2;
created topics get the replication rule; weaker existing topics are warned about."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.codec.names import RECOMMENDATIONS
from streams.runtime.topics import ExistingTopic, describe
from streams.tools.kafka_local import free_port
from streams.tools.produce import base_ts_ending_now, generate
from tests.support.harness import SEGMENTS, Cluster, feed, final_check, get_json, wait_ready
from tests.support.oracle import Oracle

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

EVENTS = 3_000


async def create_topic(bootstrap: str, name: str, partitions: int,
                       configs: dict[str, str] | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])
    finally:
        await admin.close()


async def described(bootstrap: str, topics: list[str]) -> dict[str, ExistingTopic]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await describe(admin, topics)
    finally:
        await admin.close()


async def metrics(url: str) -> str:
    async with aiohttp.ClientSession() as session:
        status, body = await get_json(session, url + "/metrics")
    assert status == 200, body
    return str(body)


@pytest.mark.parametrize("input_partitions", [3, 8, 12])
async def test_an_input_of_any_partition_count_is_counted_exactly(
        kafka_bootstrap: str, tmp_path: Path, input_partitions: int) -> None:
    cluster = Cluster(kafka_bootstrap, tmp_path)
    await create_topic(kafka_bootstrap, cluster.input_topic, input_partitions)
    records = list(generate(EVENTS, seed=input_partitions, programs=2, users=300, labels=20,
                            assets=40, invalid_ratio=0.01, base_ts=base_ts_ending_now(EVENTS)))
    oracle = Oracle()
    oracle.feed(records)
    worker = cluster.add_worker()
    try:
        await feed(cluster, [worker], records, timeout_s=120)
        await final_check(cluster, oracle, [worker], timeout_s=60)
        # Past the livelock check's first rounds (every 2.5 s), the worker still runs.
        await asyncio.sleep(3)
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()
        # Created on a single broker: RF 1, min.insync.replicas 1, changelogs compacted, and
        # no warning.
        names = [cluster.repartition_topic, f"{cluster.app_id}-{RECOMMENDATIONS}-changelog"]
        topics = await described(kafka_bootstrap, names)
        for name in names:
            t = topics[name]
            assert (t.partitions, t.replication_factor, t.min_insync_replicas) == (8, 1, 1), t
        assert topics[names[1]].cleanup_policy == "compact"
        assert "segments_topic_config_warnings{" not in await metrics(worker.url)
    finally:
        cluster.stop_all()


async def test_a_changelog_of_another_partition_count_stops_the_worker_with_code_2(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    cluster = Cluster(kafka_bootstrap, tmp_path)
    changelog = f"{cluster.app_id}-{RECOMMENDATIONS}-changelog"
    await create_topic(kafka_bootstrap, changelog, 6, {"cleanup.policy": "compact"})
    proc = await asyncio.to_thread(
        subprocess.run, [SEGMENTS, "worker"], env=cluster.env(free_port()),
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (f"topic {changelog} has 6 partitions, SEGMENTS_PARTITIONS is 8" in proc.stderr
            ), proc.stderr[-3000:]
    assert "Fix: set SEGMENTS_PARTITIONS=6" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing was created: the check comes first.
    topics = await described(kafka_bootstrap, [changelog])
    assert list(topics) == [changelog]


async def test_a_changelog_that_is_not_compacted_is_named_in_a_warning_and_a_metric(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    cluster = Cluster(kafka_bootstrap, tmp_path)
    changelog = f"{cluster.app_id}-{RECOMMENDATIONS}-changelog"
    await create_topic(kafka_bootstrap, changelog, 8, {"cleanup.policy": "delete"})
    worker = cluster.add_worker()
    try:
        await wait_ready(worker)
        body = await metrics(worker.url)
        assert (f'segments_topic_config_warnings{{setting="cleanup.policy",topic="{changelog}"}} '
                f"1.0") in body
        assert f"topic {changelog} holds state but is not compacted" in (
            worker.log_path.read_text())
    finally:
        cluster.stop_all()
