"""Recovery (runtime/recovery.py) and the partition phases (runtime/partitions.py) with an
in-memory changelog: what a rebalance rebuilds and what it keeps, malformed records skipped,
stale partitions repaired, and when the worker serves."""

from __future__ import annotations

import asyncio

from streams.codec.durable import (
    emitted_key,
    encode_emitted,
    encode_recommendation,
    expected_offset_header,
)
from streams.codec.durable import recommendation_key as rkey
from streams.codec.names import EMITTED_COUNTS, RECOMMENDATIONS
from streams.domain.events import Event
from streams.domain.family import SegmentKey
from streams.runtime.partitions import PartitionRegistry, Phase
from streams.runtime.recovery import Recovery
from tests.support.fakes import NAMES, FakeReader

FAMILY = ("p", "label", "l1", "view")
RECS = NAMES.changelog_topic(RECOMMENDATIONS)
EMITTED = NAMES.changelog_topic(EMITTED_COUNTS)


def setup() -> tuple[PartitionRegistry, FakeReader, Recovery]:
    registry = PartitionRegistry((0.5,))
    reader = FakeReader()
    return registry, reader, Recovery(registry, reader, NAMES, reader.highwaters)


def write_recommendation(reader: FakeReader, partition: int, user: str, weight: float) -> None:
    reader.write(RECS, partition, rkey(FAMILY, user),
                 encode_recommendation(weight, True, 1, 1, partition, "Label"))


async def rebalance(recovery: Recovery, assigned: set[int]) -> None:
    for table in (RECOMMENDATIONS, EMITTED_COUNTS):
        await recovery.on_rebalance(table, assigned)
    for table in (RECOMMENDATIONS, EMITTED_COUNTS):
        await recovery.on_recovered(table, assigned)
    await recovery.rebuilds.drain()


def counts(registry: PartitionRegistry, partition: int) -> list[int]:
    return [r.user_count for r in registry.active[partition].query("p", "growth", "label", 0)]


async def test_an_assignment_rebuilds_its_partitions_then_serves() -> None:
    registry, reader, recovery = setup()
    write_recommendation(reader, 0, "u1", 0.7)
    write_recommendation(reader, 0, "u2", 0.2)
    for segment_type in ("growth", "base"):  # u1 is in both at 0.5 (in_history)
        reader.write(EMITTED, 0, emitted_key((FAMILY, segment_type, 0.5)), encode_emitted(1, 0))
    assert registry.phase is Phase.STARTING
    await recovery.on_rebalance(RECOMMENDATIONS, {0, 1})
    assert registry.phase is Phase.REBALANCING and not registry.serving
    await recovery.on_rebalance(EMITTED_COUNTS, {0, 1})
    # nothing was read in the assignment callback; Faust is told it has nothing to replay
    assert reader.reads == [] and reader.slices == []
    assert recovery.persisted_offset(RECOMMENDATIONS, 0) == 1
    assert recovery.persisted_offset(EMITTED_COUNTS, 0) == 1
    await recovery.on_recovered(EMITTED_COUNTS, {0, 1})
    assert not registry.serving  # the recommendations table's completion is the signal
    await recovery.on_recovered(RECOMMENDATIONS, {0, 1})
    # the empty partition serves at once; partition 0 is rebuilt in the background
    assert registry.serving and set(registry.active) == {1} and registry.rebuilding == {0}
    assert registry.readiness() == ("rebuilding partitions [0] of its first assignment "
                                    "(1 in service)")
    await recovery.rebuilds.drain()
    assert set(registry.active) == {0, 1} and not registry.rebuilding
    assert registry.readiness() is None
    assert counts(registry, 0) == [2] and counts(registry, 1) == []
    # empty partitions are not read at all; what was read is the persisted offset
    assert reader.rebuilt(RECS) == {0} and reader.rebuilt(EMITTED) == {0}
    assert recovery.persisted_offset(RECOMMENDATIONS, 0) == 1
    assert recovery.persisted_offset(EMITTED_COUNTS, 0) == 1
    # the last published count equals the rebuilt one: nothing to publish
    assert registry.active[0].take_publication() is None


async def test_kept_partitions_are_not_read_again() -> None:
    registry, reader, recovery = setup()
    write_recommendation(reader, 0, "u1", 0.7)
    write_recommendation(reader, 1, "u2", 0.7)
    await rebalance(recovery, {0, 1})
    reader.slices.clear()
    kept = registry.active[0]
    await rebalance(recovery, {0})
    assert registry.active[0] is kept and set(registry.active) == {0}
    assert reader.reads == [] and reader.slices == []
    assert recovery.persisted_offset(RECOMMENDATIONS, 1) is None  # forgotten with it
    await rebalance(recovery, {0, 1})  # back again: rebuilt, since it was not kept
    assert reader.rebuilt(RECS) == {1} and counts(registry, 1) == [1]


async def test_malformed_records_are_skipped_and_counted() -> None:
    registry, reader, recovery = setup()
    write_recommendation(reader, 0, "u1", 0.7)
    reader.write(RECS, 0, b"garbage", b"[0.5]")
    reader.write(RECS, 0, rkey(FAMILY, "u3"), encode_recommendation(0.5, True, 1, 1, 5, "x"))
    reader.write(EMITTED, 0, b'["g"]', b"[1]")
    reader.write(RECS, 0, None, None)  # a tombstone: nothing to load, nothing wrong
    await rebalance(recovery, {0})
    assert recovery.stats.malformed_records == 3
    assert counts(registry, 0) == [1]


async def test_tombstones_read_back_as_no_state_and_a_count_of_0() -> None:
    registry, reader, recovery = setup()
    write_recommendation(reader, 0, "u1", 0.7)
    write_recommendation(reader, 0, "u2", 0.8)
    reader.write(RECS, 0, rkey(FAMILY, "u2"), None)  # forgotten by its owner
    key = (FAMILY, "growth", 0.5)
    reader.write(EMITTED, 0, emitted_key(key), encode_emitted(1, 0, 2))  # an intent 2 -> 1
    reader.write(EMITTED, 0, emitted_key(key), None)  # then published at 0
    await rebalance(recovery, {0})
    assert counts(registry, 0) == [1]
    ledger = registry.active[0].ledger
    assert ledger.emitted_count(key) == 0 and key not in ledger.uncertain
    assert recovery.stats.malformed_records == 0


async def test_a_stale_partition_is_rebuilt_from_its_changelog() -> None:
    registry, reader, recovery = setup()
    write_recommendation(reader, 0, "u1", 0.7)
    await rebalance(recovery, {0, 1})
    registry.active[0].apply(Event("p", "u9", "label", "l1", "L", "view", 0.9, True, 5), 5)
    assert counts(registry, 0) == [2]  # ahead of its changelog: its write failed
    assert registry.mark_stale({0}) == {0}
    assert 0 not in registry.active and registry.stale == {0}
    assert recovery.persisted_offset(RECOMMENDATIONS, 0) is None
    reader.failing = ConnectionError("broker away")
    await recovery.repair()
    assert registry.stale == {0} and 0 not in registry.active and 0 not in registry.recovering
    await recovery.repair()  # within the back-off: not tried
    assert reader.reads == [(RECS, {0})]  # the failed repair's read
    reader.failing = None
    await asyncio.sleep(0.15)
    await recovery.repair()
    assert not registry.stale and counts(registry, 0) == [1]  # what the changelog holds


async def test_a_rebalance_forgets_stale_partitions_and_rebuilds_those_it_assigns() -> None:
    registry, reader, recovery = setup()
    write_recommendation(reader, 0, "u1", 0.7)
    await rebalance(recovery, {0, 1})
    registry.mark_stale({0})
    await rebalance(recovery, {0, 1})
    assert not registry.stale and counts(registry, 0) == [1]


async def test_a_stopping_worker_does_not_serve_again() -> None:
    registry, _, recovery = setup()
    registry.stop()
    await rebalance(recovery, {0})
    assert registry.phase is Phase.STOPPING and not registry.serving


async def test_states_forgotten_after_a_lapsed_membership_are_rebuilt_not_kept() -> None:
    registry, reader, recovery = setup()
    write_recommendation(reader, 0, "u1", 0.7)
    await rebalance(recovery, {0})
    write_recommendation(reader, 0, "u2", 0.7)  # by the owner it had meanwhile
    registry.forget()  # (release, when the group no longer knew this worker)
    reader.slices.clear()
    await rebalance(recovery, {0})
    assert reader.rebuilt(RECS) == {0} and counts(registry, 0) == [2]


async def test_records_written_after_the_callback_set_the_next_emitted_counts_offset() -> None:
    """A record that lands after the assignment callback read the changelogs' ends is read by
    the background rebuild before the install (Faust's replay of it is ignored): the ledger
    knows the offset of the partition's next record (its version fence, domain/ledger.py)."""
    registry, reader, recovery = setup()
    key = emitted_key((("p", "label", "l1", "view"), "growth", 0.5))
    reader.write(NAMES.changelog_topic(EMITTED_COUNTS), 1, key, encode_emitted(2, 1))
    for table in (RECOMMENDATIONS, EMITTED_COUNTS):
        await recovery.on_rebalance(table, {1})
    reader.write(NAMES.changelog_topic(EMITTED_COUNTS), 1, key, encode_emitted(3, 1))
    recovery.load(EMITTED_COUNTS, 1, key, encode_emitted(3, 1), offset=1)  # Faust's replay
    assert 1 not in registry.recovering  # (ignored: the rebuild reads it)
    for table in (RECOMMENDATIONS, EMITTED_COUNTS):
        await recovery.on_recovered(table, {1})
    await recovery.rebuilds.drain()
    assert registry.active[1].ledger.next_offset == 2
    assert registry.active[1].ledger.emitted_count(
        (("p", "label", "l1", "view"), "growth", 0.5)) == 3


async def test_records_fausts_recovery_replays_set_the_next_emitted_counts_offset() -> None:
    """What Faust's own recovery replays after a standby copy taken over is remembered too."""
    registry, reader, recovery = setup()
    key = emitted_key((("p", "label", "l1", "view"), "growth", 0.5))
    reader.write(NAMES.changelog_topic(EMITTED_COUNTS), 1, key, encode_emitted(2, 1))
    copy = registry.new_state(1)  # (what StandbyReplicas.rebalanced puts there)
    registry.recovering[1] = copy
    registry.remember(EMITTED_COUNTS, 1, 0)
    for table in (RECOMMENDATIONS, EMITTED_COUNTS):
        await recovery.on_rebalance(table, {1})
    assert not recovery.rebuilds.partitions
    recovery.load(EMITTED_COUNTS, 1, key, encode_emitted(3, 1), offset=1)  # Faust's replay
    for table in (RECOMMENDATIONS, EMITTED_COUNTS):
        await recovery.on_recovered(table, {1})
    assert registry.active[1] is copy and copy.ledger.next_offset == 2


class _FailingOn(FakeReader):
    """Fails the reads of one topic only."""

    def __init__(self, topic: str) -> None:
        super().__init__()
        self.failing_topic: str | None = topic

    async def read(self, topic: str, partitions: set[int], on_record: object) -> dict[int, int]:
        if topic == self.failing_topic:
            self.reads.append((topic, set(partitions)))
            raise ConnectionError("broker away")
        return await super().read(topic, partitions, on_record)


async def test_an_aborted_repair_leaves_no_offset_behind_that_would_skip_the_rebuild() -> None:
    """A repair that read one changelog and failed on the other gives its partition up: the
    next assignment of it reads it from the start (what the aborted read remembered would make
    Faust's recovery replay only what came after it, into an empty state)."""
    registry = PartitionRegistry((0.5,))
    reader = _FailingOn(EMITTED)
    recovery = Recovery(registry, reader, NAMES, reader.highwaters)
    write_recommendation(reader, 0, "u1", 0.7)
    write_recommendation(reader, 0, "u2", 0.7)
    await rebalance(recovery, {0})
    registry.mark_stale({0})
    await recovery.repair()  # recommendations read, emitted counts failed
    assert registry.stale == {0} and 0 not in registry.recovering
    reader.failing_topic = None
    await rebalance(recovery, {0})
    assert counts(registry, 0) == [2]


async def test_a_repair_a_rebalance_interrupts_leaves_no_offset_behind() -> None:
    """A repair whose settling a rebalance interrupts: that rebalance, assigning the partition
    here again, rebuilds it from the start."""
    registry, reader, recovery = setup()
    write_recommendation(reader, 0, "u1", 0.7)
    write_recommendation(reader, 0, "u2", 0.7)
    await rebalance(recovery, {0})
    registry.mark_stale({0})
    registry.settle_budget = 1
    repair = asyncio.create_task(recovery.repair())
    for _ in range(1000):  # until read, settling in steps
        if registry.recovering:
            break
        await asyncio.sleep(0)
    assert registry.recovering
    registry.begin_rebalance()  # (the revocation)
    await repair
    assert 0 not in registry.recovering
    await rebalance(recovery, {0})
    assert counts(registry, 0) == [2]


def write_emitted(reader: FakeReader, partition: int, key: SegmentKey, count: int,
                  previous: int | None = None, expected: int | None = None) -> None:
    """An emitted-counts record its writer expected at ``expected`` (by default where it
    lands); a confirmed 0 is a tombstone, as the publisher writes it."""
    at = reader.end(EMITTED, partition) if expected is None else expected
    value = (None if count == 0 and previous is None
             else encode_emitted(count, partition, previous))
    reader.write(EMITTED, partition, emitted_key(key), value, expected_offset_header(at))


async def test_a_record_its_writer_expected_elsewhere_is_not_the_last_published_count() -> None:
    """An old owner's records that landed after the new owner's (written before its pause,
    sent after it): the segment is published again, whatever they say (domain/ledger.py)."""
    registry, reader, recovery = setup()
    write_recommendation(reader, 0, "u1", 0.7)
    write_recommendation(reader, 0, "u2", 0.7)
    growth, base = (FAMILY, "growth", 0.5), (FAMILY, "base", 0.5)
    write_emitted(reader, 0, growth, 3)  # the old owner's
    write_emitted(reader, 0, base, 3)
    write_emitted(reader, 0, growth, 2, 3)  # the new owner's
    write_emitted(reader, 0, growth, 2)
    write_emitted(reader, 0, base, 2, 3)
    write_emitted(reader, 0, base, 2)
    write_emitted(reader, 0, growth, 3, expected=2)  # the old owner's, late
    write_emitted(reader, 0, base, 0, expected=3)  # (a tombstone)
    await rebalance(recovery, {0})
    ledger = registry.active[0].ledger
    assert (ledger.emitted_count(growth), ledger.emitted_count(base)) == (2, 2)
    changes = registry.active[0].take_publication().changes  # type: ignore[union-attr]
    assert sorted((c.segment_type, c.user_count, c.previous_user_count) for c in changes) == [
        ("base", 2, 2), ("growth", 2, 2)]  # the counts are 2: published again
    assert recovery.stats.malformed_records == 0


async def test_a_late_record_alone_after_compaction_still_publishes_the_segment_again() -> None:
    """Compaction keeps the last record of a key only: the late one. The segment is published
    again at its count, 0 included."""
    registry, reader, recovery = setup()
    write_emitted(reader, 0, (FAMILY, "discovery", 0.5), 0)  # another segment's
    write_emitted(reader, 0, (FAMILY, "growth", 0.5), 3, expected=0)
    await rebalance(recovery, {0})
    changes = registry.active[0].take_publication().changes  # type: ignore[union-attr]
    assert [(c.segment_type, c.user_count, c.previous_user_count) for c in changes] == [
        ("growth", 0, 0)]


async def test_records_without_the_header_are_taken_as_they_are() -> None:
    """Written before records named their offset: the last one per segment is the count."""
    registry, reader, recovery = setup()
    write_recommendation(reader, 0, "u1", 0.7)
    reader.write(EMITTED, 0, emitted_key((FAMILY, "growth", 0.5)), encode_emitted(1, 0))
    reader.write(EMITTED, 0, emitted_key((FAMILY, "base", 0.5)), encode_emitted(1, 0))
    await rebalance(recovery, {0})
    assert registry.active[0].take_publication() is None


async def test_a_malformed_expected_offset_is_skipped_and_counted() -> None:
    _, reader, recovery = setup()
    reader.write(EMITTED, 0, emitted_key((FAMILY, "growth", 0.5)), encode_emitted(1, 0),
                 [("expected-offset", b"x")])
    await rebalance(recovery, {0})
    assert recovery.stats.malformed_records == 1


async def test_a_repair_and_fausts_replay_know_late_records_too() -> None:
    registry, reader, recovery = setup()
    key = (FAMILY, "growth", 0.5)
    write_emitted(reader, 1, key, 2)
    write_emitted(reader, 1, key, 5, expected=0)  # late
    await rebalance(recovery, {1})
    assert registry.active[1].ledger.uncertain == {key: 2}
    registry.mark_stale({1})
    await recovery.repair()  # (Reader.read, not the slices)
    assert registry.active[1].ledger.uncertain == {key: 2}
    assert registry.active[1].ledger.emitted_count(key) == 2
    copy = registry.new_state(1)  # a standby copy taken over; Faust replays after it
    registry.active.clear()
    registry.recovering[1] = copy
    for table in (RECOMMENDATIONS, EMITTED_COUNTS):
        await recovery.on_rebalance(table, {1})
    recovery.load(EMITTED_COUNTS, 1, emitted_key(key), encode_emitted(5, 1), offset=7,
                  headers=expected_offset_header(4))
    assert copy.ledger.uncertain == {key: 0}
