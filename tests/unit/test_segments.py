"""The pure aggregation state (streams/segments.py) against the oracle, without Kafka: the
generator's events applied in order equal the contract's rules; a rebuild from the durable
records (in any order) gives the same answers; replays change nothing; the query memo never
serves a stale answer."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import Event, parse_event
from streams.produce import generate
from streams.segments import (
    MEMO_MAX_ANSWERS,
    SEGMENT_TYPES,
    Family,
    MalformedRecord,
    PartitionState,
    Record,
    decode_durable,
    decode_emitted,
    encode_applied,
    encode_record,
    record_key,
)
from tests.oracle import THRESHOLDS, Oracle, assert_rows_equal


def _sorted(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return sorted(rows, key=lambda r: (-r[5], r[2], r[3], r[4]))  # type: ignore[operator]


def _applied(seed: int, events: int) -> tuple[PartitionState, Oracle]:
    records = list(generate(events, seed=seed, programs=2, users=300, labels=20, assets=30,
                            invalid_ratio=0.02))
    oracle = Oracle()
    oracle.feed(records)
    state = PartitionState(0)
    for offset, r in enumerate(records):
        if r.valid:
            state.apply(parse_event(r.value, r.timestamp_ms), offset)
    return state, oracle


def _check(state: PartitionState, oracle: Oracle, context: str) -> None:
    for program in sorted(oracle.programs()):
        for t in SEGMENT_TYPES:
            for basis in ("label", "asset"):
                for m in THRESHOLDS:
                    got = _sorted(state.query(program, t, basis, m))
                    assert_rows_equal(got, oracle.segments(program, t, basis, m),
                                      f"{context} {program}/{t}/{basis}/{m}")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_applied_events_equal_the_oracle(seed: int) -> None:
    state, oracle = _applied(seed, 6000)
    _check(state, oracle, "applied")


@pytest.mark.parametrize("rebuilding", [False, True])
def test_rebuild_from_durable_records_in_any_order_and_replays(rebuilding: bool) -> None:
    # rebuilding=True: what a new owner does (indexes built once at the end); False: records
    # loaded into a live state, indexes updated one by one.
    state, oracle = _applied(7, 6000)
    records = list(state.records())
    random.Random(7).shuffle(records)
    rebuilt = PartitionState(0, rebuilding=rebuilding)
    for family, user, rec in records:
        if rebuilding:  # as read from the changelog
            key, value = record_key(family, user), encode_record(rec, 0, "?")
            rebuilt.load_durable(key, value)
            rebuilt.load_durable(key, value)  # a replayed changelog record changes nothing
        else:
            rebuilt.load(family, user, rec, "?")
            rebuilt.load(family, user, rec, "?")
    rebuilt.finish_rebuild()
    for program in sorted(oracle.programs()):
        for t in SEGMENT_TYPES:
            for basis in ("label", "asset"):
                for m in THRESHOLDS:
                    assert [r[5:] for r in _sorted(rebuilt.query(program, t, basis, m))] == [
                        r[5:] for r in _sorted(state.query(program, t, basis, m))]


def test_applied_event_encodes_as_its_stored_record() -> None:
    # The hot path encodes the durable value from the event (encode_applied); a rebuild reads
    # it back as the stored record's encode_record.
    records = list(generate(2000, seed=5, programs=2, users=100, labels=10, assets=10))
    state = PartitionState(3)
    stored = 0
    for offset, r in enumerate(records):
        if not r.valid:
            continue
        ev = parse_event(r.value, r.timestamp_ms)
        if state.apply(ev, offset):
            stored += 1
            rec = state.families[ev.family].get(ev.user_id)
            assert rec is not None
            assert encode_applied(ev, offset, 3) == encode_record(rec, 3, ev.name)
    assert stored > 1000


def test_replayed_events_change_nothing() -> None:
    records = list(generate(3000, seed=11, programs=1, users=200, labels=10, assets=10))
    oracle = Oracle()
    oracle.feed(records)
    state = PartitionState(0)
    valid = [(offset, r) for offset, r in enumerate(records) if r.valid]
    for offset, r in valid:
        state.apply(parse_event(r.value, r.timestamp_ms), offset)
    for offset, r in valid[len(valid) // 2:]:  # at-least-once: a suffix is delivered again
        assert state.apply(parse_event(r.value, r.timestamp_ms), offset) is False
    _check(state, oracle, "after replay")


def _event(user: str, weight: float | None, ts: int, name: str = "L") -> Event:
    return Event("p", user, "label", "l1", name, "view", weight, False, ts)


def test_query_memo_sees_every_change() -> None:
    state = PartitionState(0)
    state.apply(_event("u1", 0.6, 10), 0)
    first = state.query("p", "growth", "label", 0.5)
    assert [r[5] for r in first] == [1]
    assert state.query("p", "growth", "label", 0.5) is first  # unchanged: memoised
    state.apply(_event("u2", 0.9, 11), 1)
    assert [r[5] for r in state.query("p", "growth", "label", 0.5)] == [2]
    state.apply(_event("u2", None, 12), 2)  # removal
    assert [r[5] for r in state.query("p", "growth", "label", 0.5)] == [1]
    state.apply(_event("u1", 0.7, 13, name="Renamed"), 3)  # the name moves too
    assert [r[4] for r in state.query("p", "growth", "label", 0.5)] == ["Renamed"]
    state.apply(_event("u1", None, 14), 4)
    assert state.query("p", "growth", "label", 0.5) == []
    assert state.apply(_event("u1", 0.9, 13), 5) is False  # older ts: ignored


@settings(max_examples=300, deadline=None)
@given(ts=st.integers(-(2**63), 2**63 - 1), offset=st.integers(0, 2**63 - 1),
       ts2=st.integers(-(2**63), 2**63 - 1), offset2=st.integers(0, 2**63 - 1))
def test_order_is_ts_then_offset(ts: int, offset: int, ts2: int, offset2: int) -> None:
    fam = Family()
    assert fam.put("u", 0.5, True, ts, offset, "first") is True
    assert fam.get("u") == (0.5, True, ts, offset)
    stored = fam.put("u", 0.25, False, ts2, offset2, "second")
    newer = (ts2, offset2) > (ts, offset)
    assert (stored is not None) == newer
    assert fam.get("u") == ((0.25, False, ts2, offset2) if newer else (0.5, True, ts, offset))
    assert fam.name == ("second" if newer else "first")
    assert fam.growth.count_at_least(0) == 1


def _growth_at_half(changes: list[object]) -> list[tuple[int, int]]:
    return [(c.user_count, c.previous_user_count) for c in changes  # type: ignore[attr-defined]
            if c.segment_type == "growth"]  # type: ignore[attr-defined]


def _rebuilt_with(state: PartitionState, emitted: list[tuple[object, ...]]) -> PartitionState:
    """``state``'s recommendations and the given emitted-counts records, as a new owner loads
    them after a crash."""
    rebuilt = PartitionState(0)
    for family, user, rec in state.records():
        rebuilt.load(family, user, rec, "L1")
    for key, count, *previous in emitted:
        rebuilt.load_emitted(key, count, *previous)  # type: ignore[arg-type]
    rebuilt.mark_unsettled([0.5])
    return rebuilt


def test_an_unconfirmed_publication_is_published_again_even_if_the_count_went_back() -> None:
    # The crash seen in the fault test: 0 -> 1 published, the worker died before recording it
    # as published; the count went back to 0 before the next owner published anything.
    state = PartitionState(0)
    state.apply(_event("u1", 0.9, 1), 0)
    (change,) = [c for c in state.take_changes([0.5]) if c.segment_type == "growth"]
    assert (change.user_count, change.previous_user_count) == (1, 0)
    key = change.emitted_key
    state.apply(_event("u1", 0.1, 2), 1)  # back to 0

    # Intent recorded ([1, partition, 0]), publication unconfirmed: 1 -> 0 goes out.
    rebuilt = _rebuilt_with(state, [(key, 1, 0)])
    assert _growth_at_half(rebuilt.take_changes([0.5])) == [(0, 1)]
    # Recorded as published ([1, partition]): the same.
    rebuilt = _rebuilt_with(state, [(key, 1, 0), (key, 1)])
    assert _growth_at_half(rebuilt.take_changes([0.5])) == [(0, 1)]
    # Nothing recorded (the intent is written before publishing, so nothing was published).
    rebuilt = _rebuilt_with(state, [])
    assert _growth_at_half(rebuilt.take_changes([0.5])) == []


def test_an_unconfirmed_publication_of_the_current_count_is_repeated_once() -> None:
    state = PartitionState(0)
    state.apply(_event("u1", 0.9, 1), 0)
    (change,) = [c for c in state.take_changes([0.5]) if c.segment_type == "growth"]
    key = change.emitted_key
    rebuilt = _rebuilt_with(state, [(key, 1, 0)])
    again = [c for c in rebuilt.take_changes([0.5]) if c.segment_type == "growth"]
    assert _growth_at_half(again) == [(1, 0)]  # the same change: a duplicate at most
    rebuilt.commit_change(again[0])
    rebuilt.dirty.add(("p", "label", "l1", "view"))
    assert _growth_at_half(rebuilt.take_changes([0.5])) == []  # once
    # Confirmed: nothing to publish.
    confirmed = _rebuilt_with(state, [(key, 1, 0), (key, 1)])
    assert _growth_at_half(confirmed.take_changes([0.5])) == []


def test_published_changes_wait_to_be_recorded_as_published_once() -> None:
    # The publisher records a tick's published changes with the next tick's intents (or at a
    # revocation or a stop): commit_change keeps them until take_confirmations hands them out.
    state = PartitionState(0)
    state.apply(_event("u1", 0.9, 1), 0)
    changes = state.take_changes([0.5])
    assert state.take_confirmations() == {}
    for c in changes:
        state.commit_change(c)
    assert state.take_confirmations() == {c.emitted_key: c.user_count for c in changes}
    assert state.take_confirmations() == {}  # handed out once
    # The next change of a segment names the published count as its previous one, so its
    # intent stands for the confirmation: a rebuild from it republishes only the new change.
    state.apply(_event("u2", 0.8, 2), 1)
    (growth,) = [c for c in state.take_changes([0.5]) if c.segment_type == "growth"]
    assert (growth.user_count, growth.previous_user_count) == (2, 1)
    rebuilt = _rebuilt_with(state, [(growth.emitted_key, 2, 1)])
    assert _growth_at_half(rebuilt.take_changes([0.5])) == [(2, 1)]


def _ev(user: str, weight: float | None, ts: int = 100, basis_id: str = "l1") -> Event:
    return Event("p1", user, "label", basis_id, "Label", "view", weight, True, ts)


def test_a_withdrawal_of_a_recommendation_never_held_leaves_no_state() -> None:
    state = PartitionState(0)
    for i in range(100):
        assert not state.apply(_ev(f"u{i}", None, basis_id=f"l{i}"), i)
    assert state.families == {} and state.by_program == {} and state.versions == {}
    assert state.apply(_ev("u1", 0.5), 200)
    assert not state.apply(_ev("u2", None), 201)  # the family exists, the user does not
    assert state.recommendations() == 1
    assert state.apply(_ev("u1", None, ts=101), 202)  # a held one is withdrawn, and kept
    assert not state.apply(_ev("u1", 0.9, ts=100), 203)  # so an older event stays older
    assert state.query("p1", "growth", "label", 0.0) == []


def test_the_query_memo_holds_no_answer_for_unknown_programs_and_is_bounded() -> None:
    state = PartitionState(0)
    state.apply(_ev("u1", 0.5), 1)
    for i in range(5000):
        assert state.query(f"nobody-{i}", "growth", "label", 0.5) == []
    assert len(state._memo) == 0
    for i in range(5000):
        state.query("p1", "growth", "label", i / 5000)
    assert len(state._memo) <= MEMO_MAX_ANSWERS


KEY = record_key(("p1", "label", "l1", "view"), "u1")


def test_durable_records_decode_as_encoded() -> None:
    value = encode_record(Record(0.25, True, 17, 4), 3, "Label one")
    assert decode_durable(KEY, value, 3) == (("p1", "label", "l1", "view"), "u1",
                                              Record(0.25, True, 17, 4), "Label one")
    assert decode_emitted(b"[5,3]", 3) == (5, None)
    assert decode_emitted(b"[5,3,4]", 3) == (5, 4)


@pytest.mark.parametrize(("key", "value"), [
    (KEY, b"not json"),
    (KEY, b'[0.25,true,17,4,3]'),  # wrong arity
    (KEY, b'[0.25,true,17,4,3,"n",1]'),
    (KEY, b'[1.5,true,17,4,3,"n"]'),  # weight out of range
    (KEY, b'[-0.1,true,17,4,3,"n"]'),
    (KEY, b'["0.5",true,17,4,3,"n"]'),
    (KEY, b'[0.5,1,17,4,3,"n"]'),
    (KEY, b'[0.5,true,1.5,4,3,"n"]'),
    (KEY, b'[0.5,true,17,-4,3,"n"]'),
    (KEY, b'[0.5,true,17,4,2,"n"]'),  # a record of another partition
    (KEY, b'{"weight":0.5}'),
    (b'["p1","label","l1","view"]', encode_record(Record(0.5, True, 1, 1), 3, "n")),
    (b'["p1","labels","l1","view","u1"]', encode_record(Record(0.5, True, 1, 1), 3, "n")),
    (b'["","label","l1","view","u1"]', encode_record(Record(0.5, True, 1, 1), 3, "n")),
    (b"[" * 10_000, encode_record(Record(0.5, True, 1, 1), 3, "n")),
])
def test_malformed_durable_records_are_refused(key: bytes, value: bytes) -> None:
    with pytest.raises(MalformedRecord):
        decode_durable(key, value, 3)
    state = PartitionState(3, rebuilding=True)
    with pytest.raises(MalformedRecord):
        state.load_durable(key, value)
    assert state.recommendations() == 0


@pytest.mark.parametrize("value", [b"", b"[]", b"[1]", b"[-1,3]", b"[1,2]", b"[1,3,2,4]",
                                   b'["1",3]', b"[1.5,3]", b"null"])
def test_malformed_emitted_records_are_refused(value: bytes) -> None:
    with pytest.raises(MalformedRecord):
        decode_emitted(value, 3)
