"""The ingest handler (runtime/ingest.py) in memory: records in, outputs out, as values."""

from __future__ import annotations

import orjson

from streams.codec.durable import encode_applied, recommendation_key
from streams.codec.input import parse_event
from streams.codec.keys import family_key
from streams.codec.partitioner import partition_for
from streams.codec.position import OFFSET_LIMIT, input_position
from streams.codec.wire import decode_event, encode_event
from streams.domain.partition import PartitionState
from streams.runtime.ingest import BatchOutput, IngestHandler
from tests.support.fakes import NAMES, PARTITIONS, Rec, event_doc, family_of, keyed, unkeyed


def handler() -> IngestHandler:
    return IngestHandler(NAMES, PARTITIONS, 3_600_000)


def test_a_record_on_its_familys_partition_is_applied_here() -> None:
    doc = event_doc("u1")
    rec = keyed(doc, offset=7)
    state, out = PartitionState(rec.partition, (0.5,)), BatchOutput()
    handler().handle(rec.topic, rec.partition, state, [rec], out)
    key = recommendation_key(family_of(doc), "u1")
    ev = parse_event(rec.value, rec.timestamp)
    assert out.writes == {rec.partition: {key: encode_applied(
        ev, input_position(rec.partition, 7), rec.partition)}}
    assert out.repartition == {} and out.dead == []
    assert state.query("p", "growth", "label", 0.5)[0].user_count == 1


def test_a_record_elsewhere_goes_to_its_familys_partition() -> None:
    doc = event_doc("u1")
    fkey = family_key(family_of(doc))
    owner = partition_for(fkey, PARTITIONS)
    here = (owner + 1) % PARTITIONS
    state, out = PartitionState(here, (0.5,)), BatchOutput()
    handler().handle(NAMES.input_topic, here, state, [unkeyed(doc, here, 3)], out)
    ((key, value),) = out.repartition[owner]
    ev, _, source = decode_event(value)
    assert key == fkey and ev.user_id == "u1" and source == (here, 3)
    assert out.sources == {owner: {here}}
    assert out.writes == {here: {}} and state.recommendations() == 0


def test_a_keyed_record_on_the_wrong_partition_is_repartitioned_not_applied() -> None:
    rec = keyed(event_doc("u1"), offset=0)
    wrong = (rec.partition + 1) % PARTITIONS
    state, out = PartitionState(wrong, (0.5,)), BatchOutput()
    moved = Rec(rec.topic, wrong, 0, rec.key, rec.value)
    handler().handle(moved.topic, wrong, state, [moved], out)
    assert list(out.repartition) == [rec.partition] and state.recommendations() == 0


def test_invalid_records_are_dead_letters_with_their_reason() -> None:
    state, out = PartitionState(0, (0.5,)), BatchOutput()
    bad = [Rec(NAMES.input_topic, 0, 0, None, None), Rec(NAMES.input_topic, 0, 1, b"k", b"{"),
           Rec(NAMES.input_topic, 0, 2, None, orjson.dumps(event_doc("u", weight=2.0)))]
    handler().handle(NAMES.input_topic, 0, state, bad, out)
    assert [(r.offset, reason) for r, reason in out.dead] == [
        (0, "null record value"), (1, out.dead[1][1]), (2, out.dead[2][1])]
    assert "JSON" in out.dead[1][1] and "$.weight" in out.dead[2][1]


def test_repartition_records_not_ours_are_dead_letters() -> None:
    doc = event_doc("u1")
    rec = keyed(doc, 0)
    ev = parse_event(rec.value, rec.timestamp)
    wrong = (rec.partition + 1) % PARTITIONS
    state, out = PartitionState(wrong, (0.5,)), BatchOutput()
    records = [Rec(NAMES.repartition_topic, wrong, 0, rec.key, encode_event(ev, 5, 0, 0)),
               Rec(NAMES.repartition_topic, wrong, 1, None, b"[1,2,3]"),
               Rec(NAMES.repartition_topic, wrong, 2, None, None),
               Rec(NAMES.repartition_topic, wrong, 3, None,
                   encode_event(ev, 5, 0, OFFSET_LIMIT))]
    handler().handle(NAMES.repartition_topic, wrong, state, records, out)
    reasons = [reason for _, reason in out.dead]
    assert reasons[0] == (f"repartition record of partition {rec.partition} found on "
                          f"partition {wrong}")
    assert all(r.startswith("bad repartition record") for r in reasons[1:])
    assert "out of range" in reasons[3]
    assert state.recommendations() == 0


def test_a_repartitioned_event_is_applied_on_its_partition() -> None:
    doc = event_doc("u1")
    rec = keyed(doc, 0)
    ev = parse_event(rec.value, rec.timestamp)
    state, out = PartitionState(rec.partition, (0.5,)), BatchOutput()
    record = Rec(NAMES.repartition_topic, rec.partition, 9, rec.key, encode_event(ev, 5, 2, 4))
    handler().handle(record.topic, rec.partition, state, [record, record], out)  # a replay too
    assert out.writes == {rec.partition: {recommendation_key(family_of(doc), "u1"):
                                          encode_applied(ev, input_position(2, 4),
                                                         rec.partition)}}


def test_a_repartitioned_event_of_before_the_position_is_ordered_by_its_offset() -> None:
    doc = event_doc("u1")
    rec = keyed(doc, 0)
    ev = parse_event(rec.value, rec.timestamp)
    state, out = PartitionState(rec.partition, (0.5,)), BatchOutput()
    record = Rec(NAMES.repartition_topic, rec.partition, 9, rec.key, encode_event(ev, 5))
    handler().handle(record.topic, rec.partition, state, [record], out)
    assert out.writes == {rec.partition: {recommendation_key(family_of(doc), "u1"):
                                          encode_applied(ev, 9, rec.partition)}}


def test_an_input_offset_too_large_for_a_position_is_a_dead_letter() -> None:
    rec = keyed(event_doc("u1"), offset=OFFSET_LIMIT)
    state, out = PartitionState(rec.partition, (0.5,)), BatchOutput()
    handler().handle(rec.topic, rec.partition, state, [rec], out)
    assert [(r, "out of range" in reason) for r, reason in out.dead] == [(rec, True)]
    assert out.repartition == {} and state.recommendations() == 0


def _through_repartition(out: BatchOutput, owner: int, first_offset: int) -> list[Rec]:
    """The records ``out`` sends to partition ``owner`` of the repartition topic, as read back
    from offset ``first_offset`` on."""
    return [Rec(NAMES.repartition_topic, owner, first_offset + i, key, value)
            for i, (key, value) in enumerate(out.repartition.get(owner, []))]


def _weight(state: PartitionState, family: tuple[str, str, str, str], user: str) -> object:
    stored = state.store.families[family].get(user)
    assert stored is not None
    return stored.weight


def test_equal_ts_keyed_then_unkeyed_on_one_partition_the_later_input_record_wins() -> None:
    # Contract §2: on equal ts the event later in the input partition wins, whichever path
    # (applied here, or repartitioned) each one took.
    first = keyed(event_doc("u1", 0.9), offset=5)
    p = first.partition
    second = unkeyed(event_doc("u1", None), p, 6)
    state, out = PartitionState(p, (0.5,)), BatchOutput()
    h = handler()
    h.handle(NAMES.input_topic, p, state, [first, second], out)
    assert _weight(state, family_of(event_doc("u1")), "u1") == 0.9
    again = BatchOutput()
    h.handle(NAMES.repartition_topic, p, state, _through_repartition(out, p, 0), again)
    assert _weight(state, family_of(event_doc("u1")), "u1") is None
    assert state.query("p", "growth", "label", 0.0) == []


def test_equal_ts_unkeyed_then_keyed_on_one_partition_the_later_input_record_wins() -> None:
    first = unkeyed(event_doc("u1", None), keyed(event_doc("u1"), 0).partition, 0)
    p = first.partition
    second = keyed(event_doc("u1", 0.9), offset=1)
    state, out = PartitionState(p, (0.5,)), BatchOutput()
    h = handler()
    h.handle(NAMES.input_topic, p, state, [first, second], out)
    # The repartition topic already holds many records: its offsets say nothing of the input's.
    h.handle(NAMES.repartition_topic, p, state, _through_repartition(out, p, 1000),
             BatchOutput())
    assert _weight(state, family_of(event_doc("u1")), "u1") == 0.9


def test_equal_ts_across_input_partitions_a_replay_keeps_the_winner() -> None:
    # Two unkeyed events of one recommendation, equal ts, on input partitions 0 and 1. Reading
    # partition 0 again (its offset was not committed) re-sends its event to the repartition
    # topic at a later offset; contract §2: that changes nothing.
    owner = keyed(event_doc("u1"), 0).partition
    family = family_of(event_doc("u1"))
    state, h = PartitionState(owner, (0.5,)), handler()
    out0, out1 = BatchOutput(), BatchOutput()
    h.handle(NAMES.input_topic, 0, None, [unkeyed(event_doc("u1", 0.9), 0, 3)], out0)
    h.handle(NAMES.input_topic, 1, None, [unkeyed(event_doc("u1", None), 1, 3)], out1)
    h.handle(NAMES.repartition_topic, owner, state, _through_repartition(out0, owner, 0),
             BatchOutput())
    h.handle(NAMES.repartition_topic, owner, state, _through_repartition(out1, owner, 1),
             BatchOutput())
    before = _weight(state, family, "u1")
    replay = BatchOutput()
    h.handle(NAMES.input_topic, 0, None, [unkeyed(event_doc("u1", 0.9), 0, 3)], replay)
    h.handle(NAMES.repartition_topic, owner, state, _through_repartition(replay, owner, 2),
             BatchOutput())
    assert _weight(state, family, "u1") == before
    # And the same in the other arrival order.
    other = PartitionState(owner, (0.5,))
    h.handle(NAMES.repartition_topic, owner, other, _through_repartition(out1, owner, 0),
             BatchOutput())
    h.handle(NAMES.repartition_topic, owner, other, _through_repartition(out0, owner, 1),
             BatchOutput())
    assert _weight(other, family, "u1") == before
