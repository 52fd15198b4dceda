"""The ingest handler (runtime/ingest.py) in memory: records in, outputs out, as values."""

from __future__ import annotations

import orjson

from streams.codec.durable import encode_applied, recommendation_key
from streams.codec.input import parse_event
from streams.codec.keys import family_key
from streams.codec.partitioner import partition_for
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
    assert out.writes == {rec.partition: {key: encode_applied(ev, 7, rec.partition)}}
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
    assert key == fkey and decode_event(value)[0].user_id == "u1"
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
    records = [Rec(NAMES.repartition_topic, wrong, 0, rec.key, encode_event(ev, 5)),
               Rec(NAMES.repartition_topic, wrong, 1, None, b"[1,2,3]"),
               Rec(NAMES.repartition_topic, wrong, 2, None, None)]
    handler().handle(NAMES.repartition_topic, wrong, state, records, out)
    reasons = [reason for _, reason in out.dead]
    assert reasons[0] == (f"repartition record of partition {rec.partition} found on "
                          f"partition {wrong}")
    assert all(r.startswith("bad repartition record") for r in reasons[1:])
    assert state.recommendations() == 0


def test_a_repartitioned_event_is_applied_on_its_partition() -> None:
    doc = event_doc("u1")
    rec = keyed(doc, 0)
    ev = parse_event(rec.value, rec.timestamp)
    state, out = PartitionState(rec.partition, (0.5,)), BatchOutput()
    record = Rec(NAMES.repartition_topic, rec.partition, 9, rec.key, encode_event(ev, 5))
    handler().handle(record.topic, rec.partition, state, [record, record], out)  # a replay too
    assert out.writes == {rec.partition: {recommendation_key(family_of(doc), "u1"):
                                          encode_applied(ev, 9, rec.partition)}}
