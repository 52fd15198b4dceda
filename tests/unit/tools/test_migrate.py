"""`segments migrate`'s rules (streams/tools/migrate.py): what it refuses, where each record goes
and what it becomes there, where copies start and what the new group commits."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from streams.codec.durable import (
    decode_recommendation,
    decode_recommendation_key,
    encode_recommendation,
    recommendation_key,
)
from streams.codec.exceptions import MalformedRecord
from streams.codec.keys import family_key
from streams.codec.partitioner import partition_for
from streams.codec.wire import encode_event
from streams.domain.events import Event
from streams.domain.exceptions import InvalidEvent
from streams.runtime.ingest import IngestHandler
from streams.settings import Settings
from streams.tools.exceptions import MigrationRefused
from streams.tools.migrate import (
    copy_starts,
    input_offsets,
    rekey_recommendation,
    rekey_repartitioned,
    target_refusal,
    target_settings,
    target_topics,
)

SOURCE = Settings(app_id="segs", partitions=8)


def test_the_target_settings() -> None:
    target = target_settings(SOURCE, "segs-32", 32)
    assert (target.app_id, target.partitions, target.input_topic) == ("segs-32", 32,
                                                                      SOURCE.input_topic)
    assert target_topics(target.names) == [
        "segs-32-recommendations-by-segment", "segs-32-recommendations-changelog",
        "segs-32-emitted-counts-changelog"]


@pytest.mark.parametrize(("app_id", "partitions", "words"), [
    ("segs-32", 0, "--partitions 0"),
    ("segs-32", -4, "--partitions -4"),
    ("segs-32", 10_001, "--partitions 10001"),
    ("segs", 32, "source's own app id"),
    ("", 32, "empty"),
    ("my app", 32, "--to-app-id"),
    ("a" * 240, 32, "--to-app-id"),
])
def test_requests_that_cannot_work_are_refused(app_id: str, partitions: int, words: str) -> None:
    with pytest.raises(MigrationRefused) as err:
        target_settings(SOURCE, app_id, partitions)
    assert words in str(err.value)
    assert err.value.exit_code == 2


def test_a_target_holding_data_is_refused() -> None:
    assert target_refusal({}, 0) is None
    assert target_refusal({"segs-32-recommendations-changelog": 0}, 0) is None  # created empty
    refused = target_refusal({"segs-32-recommendations-changelog": 5,
                              "segs-32-recommendations-by-segment": 0}, 0)
    assert refused is not None and "segs-32-recommendations-changelog" in refused
    assert "by-segment" not in refused
    refused = target_refusal({}, 3)
    assert refused is not None and "committed offsets" in refused


families = st.tuples(st.text(min_size=1, max_size=8), st.sampled_from(["label", "asset"]),
                     st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8))


@given(family=families, user=st.text(min_size=1, max_size=8),
       weight=st.none() | st.floats(0, 1), partitions=st.integers(1, 64))
def test_a_recommendation_goes_where_the_worker_routes_its_family(
        family: tuple[str, str, str, str], user: str, weight: float | None,
        partitions: int) -> None:
    source_partition = partition_for(family_key(family), 8)
    key = recommendation_key(family, user)
    value = encode_recommendation(weight, True, 1_700_000_000_000, 12345, source_partition, "n")
    target, copied = rekey_recommendation(key, value, source_partition, partitions)
    handler = IngestHandler(SOURCE.names, partitions, 3_600_000)
    assert target == handler.route(family)[1]
    assert copied is not None
    k, v = decode_recommendation(key, copied, target)  # it names its new partition
    assert (k.family, k.user_id) == (family, user)
    assert (v.weight, v.in_history, v.ts, v.offset, v.name) == (
        weight, True, 1_700_000_000_000, 12345, "n")
    # A tombstone (a forgotten withdrawal) goes to the same partition.
    assert rekey_recommendation(key, None, source_partition, partitions) == (target, None)
    assert decode_recommendation_key(key).family == family


def test_records_this_product_does_not_write_are_refused() -> None:
    family = ("p", "label", "l1", "view")
    key = recommendation_key(family, "u")
    right = partition_for(family_key(family), 8)
    value = encode_recommendation(0.5, False, 1, 2, right, "n")
    with pytest.raises(MalformedRecord):  # a record of another partition
        rekey_recommendation(key, value, (right + 1) % 8, 32)
    with pytest.raises(MalformedRecord):
        rekey_recommendation(b"not json", value, right, 32)
    with pytest.raises(MalformedRecord):
        rekey_recommendation(b"[1]", None, right, 32)
    with pytest.raises(InvalidEvent):
        rekey_repartitioned(b"[]", 32)
    with pytest.raises(InvalidEvent):
        rekey_repartitioned(None, 32)


def test_a_repartitioned_event_goes_to_its_familys_partition() -> None:
    ev = Event("p", "u", "asset", "a1", "A", "buy", 0.7, False, 5)
    partition, key = rekey_repartitioned(encode_event(ev, 5, 3, 99), 32)
    assert key == family_key(ev.family)
    assert partition == partition_for(key, 32)


def test_where_copies_start_and_what_the_new_group_commits() -> None:
    committed = {TopicPartition("segs-recommendations-by-segment", 1): 40,
                 TopicPartition("in", 0): 100, TopicPartition("in", 2): 7}
    assert copy_starts(committed, "segs-recommendations-by-segment", [0, 1]) == {
        TopicPartition("segs-recommendations-by-segment", 0): None,
        TopicPartition("segs-recommendations-by-segment", 1): 40}
    assert input_offsets(committed, "in") == {TopicPartition("in", 0): 100,
                                              TopicPartition("in", 2): 7}
