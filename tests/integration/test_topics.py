"""Topics are checked at start (contract section 11): an input topic of any partition count is
counted exactly; an internal topic of another partition count stops the worker with exit code 2;
created topics get the replication rule; weaker existing topics are warned about."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.codec.names import RECOMMENDATIONS
from streams.runtime.topics import ExistingTopic, describe, ensure_topics
from streams.settings import Settings
from streams.tools import kafka_local
from streams.tools.kafka_local import free_port
from streams.tools.produce import base_ts_ending_now, generate
from tests.support.harness import SEGMENTS, Cluster, feed, final_check, get_json, wait_ready
from tests.support.oracle import Oracle

# untimed: judged by what is counted and how topics are configured, with waits of a minute.
pytestmark = [pytest.mark.integration, pytest.mark.untimed, pytest.mark.timeout(240)]

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
        # Created on a single broker: RF 1, min.insync.replicas 1, changelogs and
        # segment-counts compacted, and no warning.
        names = [cluster.repartition_topic, f"{cluster.app_id}-{RECOMMENDATIONS}-changelog"]
        topics = await described(kafka_bootstrap, [*names, cluster.counts_topic])
        for name in names:
            t = topics[name]
            assert (t.partitions, t.replication_factor, t.min_insync_replicas) == (8, 1, 1), t
        assert topics[names[1]].cleanup_policy == "compact"
        assert topics[cluster.counts_topic].cleanup_policy == "compact"
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


async def _wait_listed(bootstrap: str, topic: str, timeout_s: float = 30.0) -> None:
    """Until the broker(s) at ``bootstrap`` list ``topic`` in their metadata."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while topic not in await admin.list_topics():
            assert time.monotonic() < deadline, f"{bootstrap} never listed {topic}"
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def three_brokers_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A three-node KRaft cluster on loopback (`segments kafka start --brokers 3`): its data."""
    data = tmp_path_factory.mktemp("kafka-3")
    kafka_local.start_cluster(3, port=0, data_dir=data)
    try:
        yield data
    finally:
        kafka_local.stop_cluster(data)


@pytest.fixture(scope="module")
def three_brokers(three_brokers_data: Path) -> str:
    state = kafka_local.read_cluster(three_brokers_data)
    assert state is not None
    return state.bootstrap


async def test_on_three_brokers_topics_get_rf_3_and_min_insync_2_and_rf_1_is_warned_about(
        three_brokers: str) -> None:
    settings = Settings(bootstrap_servers=three_brokers, app_id="three", input_topic="three-in",
                        dlq_topic="three-dlq", changes_topic="three-changes",
                        counts_topic="three-counts")
    admin = AIOKafkaAdminClient(bootstrap_servers=three_brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("three-dlq", 8, 1)])
        # Every broker knows the topic before the worker's check asks any of them.
        for node in three_brokers.split(","):
            await _wait_listed(node, "three-dlq")
        report = await ensure_topics(settings, wait_s=30)
        created = ["three-in", "three-changes", "three-counts",
                   "three-recommendations-by-segment", *settings.names.changelog_topics]
        assert (report.replication_factor, report.brokers, sorted(report.created)) == (
            3, 3, sorted(created))
        assert [(w.topic, w.setting) for w in report.warnings] == [
            ("three-dlq", "replication.factor")]
        # Created topics and their configs reach every broker's metadata shortly after; a
        # broker that has not yet heard of a topic answers its configs with an error (None).
        for _ in range(50):
            topics = await describe(admin, [*created, "three-dlq"])
            if len(topics) == len(created) + 1 and all(
                    t.min_insync_replicas is not None for t in topics.values()):
                break
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    for name in created:
        assert (topics[name].replication_factor, topics[name].min_insync_replicas) == (3, 2)
    for name in [*settings.names.changelog_topics, "three-counts"]:
        assert topics[name].cleanup_policy == "compact"
    assert topics["three-dlq"].replication_factor == 1


async def test_a_killed_node_of_the_cluster_is_started_again(three_brokers_data: Path) -> None:
    """``kafka_local.restart_node`` (the scale test's broker fault): the node killed with -9
    comes back with its data and ports, and the metadata lists all three brokers again."""
    state = kafka_local.read_cluster(three_brokers_data)
    assert state is not None
    old = state.nodes[2]
    os.kill(old.pid, signal.SIGKILL)
    for _ in range(100):
        if not kafka_local.pid_alive(old.pid):
            break
        await asyncio.sleep(0.1)
    assert kafka_local.running_cluster(three_brokers_data) is None
    new = await asyncio.to_thread(kafka_local.restart_node, three_brokers_data, 3)
    assert new.nodes[2].pid != old.pid
    assert (new.nodes[2].port, new.nodes[2].controller_port) == (old.port, old.controller_port)
    assert kafka_local.running_cluster(three_brokers_data) == new  # (restart_node returns
    # once the metadata listed the three brokers; a client's next request may still time out)
