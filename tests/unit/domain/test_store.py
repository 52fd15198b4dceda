"""The families of one partition (domain/store.py) against the oracle, without Kafka: the
generator's events applied in order equal the contract's rules; a rebuild from the stored
recommendations (in any order) gives the same answers; replays change nothing; the query memo
never serves a stale answer and is bounded."""

from __future__ import annotations

import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec.durable import (
    decode_recommendation,
    encode_applied,
    encode_recommendation,
    recommendation_key,
)
from streams.codec.input import parse_event
from streams.domain.events import SEGMENT_TYPES, Event
from streams.domain.family import Family
from streams.domain.store import MEMO_MAX_ANSWERS, FamilyStore
from streams.tools.produce import generate
from tests.support.oracle import THRESHOLDS, Oracle, assert_rows_equal


def _sorted(rows: list[object]) -> list[tuple[object, ...]]:
    """Rows as tuples in the oracle's order (written independently of domain/rows.py)."""
    tuples = [msgspec.structs.astuple(r) for r in rows]  # type: ignore[arg-type]
    return sorted(tuples, key=lambda r: (-r[5], r[2], r[3], r[4]))  # type: ignore[operator]


def _applied(seed: int, events: int) -> tuple[FamilyStore, Oracle]:
    records = list(generate(events, seed=seed, programs=2, users=300, labels=20, assets=30,
                            invalid_ratio=0.02))
    oracle = Oracle()
    oracle.feed(records)
    state = FamilyStore()
    for offset, r in enumerate(records):
        if r.valid:
            state.apply(parse_event(r.value, r.timestamp_ms), offset)
    return state, oracle


def _check(state: FamilyStore, oracle: Oracle, context: str) -> None:
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
    rebuilt = FamilyStore(rebuilding=rebuilding)
    for family, user, rec in records:
        # as read back from the changelog; a replayed changelog record changes nothing
        key = recommendation_key(family, user)
        value = encode_recommendation(rec.weight, rec.in_history, rec.ts, rec.offset, 0, "?")
        for _ in range(2):
            k, v = decode_recommendation(key, value, 0)
            rebuilt.load(k.family, k.user_id, v.weight, v.in_history, v.ts, v.offset, v.name)
    rebuilt.finish_rebuild()
    for program in sorted(oracle.programs()):
        for t in SEGMENT_TYPES:
            for basis in ("label", "asset"):
                for m in THRESHOLDS:
                    assert [r[5:] for r in _sorted(rebuilt.query(program, t, basis, m))] == [
                        r[5:] for r in _sorted(state.query(program, t, basis, m))]  # type: ignore[arg-type]


def test_applied_event_encodes_as_its_stored_record() -> None:
    # The hot path encodes the durable value from the event (encode_applied); a rebuild reads
    # it back as the stored recommendation's encoding.
    records = list(generate(2000, seed=5, programs=2, users=100, labels=10, assets=10))
    state = FamilyStore()
    stored = 0
    for offset, r in enumerate(records):
        if not r.valid:
            continue
        ev = parse_event(r.value, r.timestamp_ms)
        if state.apply(ev, offset):
            stored += 1
            rec = state.families[ev.family].get(ev.user_id)
            assert rec is not None
            assert encode_applied(ev, offset, 3) == encode_recommendation(
                rec.weight, rec.in_history, rec.ts, rec.offset, 3, ev.name)
    assert stored > 1000


def test_replayed_events_change_nothing() -> None:
    records = list(generate(3000, seed=11, programs=1, users=200, labels=10, assets=10))
    oracle = Oracle()
    oracle.feed(records)
    state = FamilyStore()
    valid = [(offset, r) for offset, r in enumerate(records) if r.valid]
    for offset, r in valid:
        state.apply(parse_event(r.value, r.timestamp_ms), offset)
    for offset, r in valid[len(valid) // 2:]:  # at-least-once: a suffix is delivered again
        assert state.apply(parse_event(r.value, r.timestamp_ms), offset) is False
    _check(state, oracle, "after replay")


def _event(user: str, weight: float | None, ts: int, name: str = "L") -> Event:
    return Event("p", user, "label", "l1", name, "view", weight, False, ts)


def test_query_memo_sees_every_change() -> None:
    state = FamilyStore()
    state.apply(_event("u1", 0.6, 10), 0)
    first = state.query("p", "growth", "label", 0.5)
    assert [r.user_count for r in first] == [1]
    assert state.query("p", "growth", "label", 0.5) is first  # unchanged: memoised
    state.apply(_event("u2", 0.9, 11), 1)
    assert [r.user_count for r in state.query("p", "growth", "label", 0.5)] == [2]
    state.apply(_event("u2", None, 12), 2)  # removal
    assert [r.user_count for r in state.query("p", "growth", "label", 0.5)] == [1]
    state.apply(_event("u1", 0.7, 13, name="Renamed"), 3)  # the name moves too
    assert [r.name for r in state.query("p", "growth", "label", 0.5)] == ["Renamed"]
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
    assert fam.count_at_least("growth", 0) == 1


def _ev(user: str, weight: float | None, ts: int = 100, basis_id: str = "l1") -> Event:
    return Event("p1", user, "label", basis_id, "Label", "view", weight, True, ts)


def test_a_withdrawal_of_a_recommendation_never_seen_is_kept_with_its_ts() -> None:
    # The minimal case: the withdrawal first, then an older event of the same
    # recommendation; contract §2: the older event is ignored, so nobody is counted.
    state = FamilyStore()
    assert state.apply(Event("p1", "user-177", "label", "lbl-0", "lbl-0", "view", None, False,
                             1764000010254), 1)
    assert not state.apply(Event("p1", "user-177", "label", "lbl-0", "lbl-0", "view", 0.1416,
                                 False, 1764000008454), 2)
    assert state.query("p1", "growth", "label", 0.0) == []
    assert state.recommendations() == 1
    # A newer event after it counts, and a withdrawal newer than that removes it again.
    assert state.apply(_ev("user-177", 0.5, ts=1764000010255, basis_id="lbl-0"), 3)
    assert [r.user_count for r in state.query("p1", "growth", "label", 0.0)] == [1]
    assert state.apply(_ev("user-177", None, ts=1764000010256, basis_id="lbl-0"), 4)
    assert state.query("p1", "growth", "label", 0.0) == []


def test_a_withdrawal_kept_survives_a_rebuild_from_the_durable_records() -> None:
    state = FamilyStore()
    assert state.apply(_ev("u1", None, ts=200), 1)
    rebuilt = FamilyStore(rebuilding=True)
    for family, user, rec in state.records():
        rebuilt.load(family, user, rec.weight, rec.in_history, rec.ts, rec.offset, "Label")
    assert not rebuilt.apply(_ev("u1", 0.9, ts=150), 2)
    assert rebuilt.query("p1", "growth", "label", 0.0) == []


def test_the_query_memo_holds_no_answer_for_unknown_programs_and_is_bounded() -> None:
    state = FamilyStore()
    state.apply(_ev("u1", 0.5), 1)
    for i in range(5000):
        assert state.query(f"nobody-{i}", "growth", "label", 0.5) == []
    assert len(state._memo) == 0
    for i in range(5000):
        state.query("p1", "growth", "label", i / 5000)
    assert len(state._memo) <= MEMO_MAX_ANSWERS
