"""The topic rules of the check at start (runtime/topics.py, contract section 11): the default
replication factor, min.insync.replicas, a partition count that stops the worker, and which
existing settings are warned about."""

from __future__ import annotations

import pytest

from streams.runtime.topics import (
    ExistingTopic,
    WantedTopic,
    default_replication_factor,
    min_insync_replicas,
    new_topic,
    partition_mismatch,
    wanted_topics,
    weaknesses,
)
from tests.support.fakes import NAMES

STATE = WantedTopic("app-recommendations-changelog", True, True)
PLAIN = WantedTopic("app-in", False, False)


@pytest.mark.parametrize(("brokers", "rf", "insync"), [
    (1, 1, 1), (2, 2, 2), (3, 3, 2), (5, 3, 2), (0, 1, 1)])
def test_replication_follows_the_cluster(brokers: int, rf: int, insync: int) -> None:
    assert default_replication_factor(brokers) == rf
    assert min_insync_replicas(rf) == insync


def test_created_topics_carry_min_insync_and_state_topics_are_compacted() -> None:
    assert new_topic(STATE, 8, 3).topic_configs == {"min.insync.replicas": "2",
                                                   "cleanup.policy": "compact"}
    plain = new_topic(PLAIN, 8, 1)
    assert (plain.num_partitions, plain.replication_factor, plain.topic_configs) == (
        8, 1, {"min.insync.replicas": "1"})


def test_only_the_internal_topics_must_have_the_partition_count() -> None:
    fixed = {t.name for t in wanted_topics(NAMES) if t.fixed_partitions}
    assert fixed == {NAMES.repartition_topic, *NAMES.changelog_topics}
    compacted = {t.name for t in wanted_topics(NAMES) if t.compacted}
    assert compacted == {*NAMES.changelog_topics, NAMES.counts_topic}  # §11: and segment-counts


def test_a_partition_count_that_differs_names_the_topic_both_counts_and_the_fix() -> None:
    assert partition_mismatch(ExistingTopic("t", 8, 1), 8) is None
    message = partition_mismatch(ExistingTopic("app-recommendations-changelog", 6, 1), 8)
    assert message is not None
    assert message.startswith("topic app-recommendations-changelog has 6 partitions, "
                              "SEGMENTS_PARTITIONS is 8")
    assert "Fix: set SEGMENTS_PARTITIONS=6" in message and "SEGMENTS_APP_ID" in message


@pytest.mark.parametrize(("topic", "wanted", "brokers", "settings"), [
    (ExistingTopic("t", 8, 1, 1, "compact"), STATE, 1, []),  # a single broker: honest RF 1
    (ExistingTopic("t", 8, 1, 1, "delete"), PLAIN, 3, ["replication.factor"]),
    (ExistingTopic("t", 8, 3, 1, "compact"), STATE, 3, ["min.insync.replicas"]),
    (ExistingTopic("t", 8, 3, 2, "compact"), STATE, 3, []),
    (ExistingTopic("t", 8, 2, 1, "compact"), STATE, 3, []),  # RF 2: min.insync 1 is the rule
    (ExistingTopic("t", 8, 1, 1, "delete"), STATE, 1, ["cleanup.policy"]),
    (ExistingTopic("t", 8, 3, 2, "compact,delete"), STATE, 3, []),
    (ExistingTopic("t", 8, 3, 1, "delete"), STATE, 3,
     ["min.insync.replicas", "cleanup.policy"]),
    (ExistingTopic("t", 8, 3, None, None), STATE, 3, []),  # settings not known: no warning
])
def test_weaker_settings_are_warned_about(topic: ExistingTopic, wanted: WantedTopic,
                                          brokers: int, settings: list[str]) -> None:
    found = weaknesses(topic, wanted, brokers)
    assert [w.setting for w in found] == settings
    assert all(w.topic == "t" and w.message.startswith("topic t ") for w in found)
