"""A Family's counts and strengths against brute force over its stored recommendations, through
its two representations: tiny (a user list, no index, queries scan the columns) and indexed
(a user dict, base and discovery indexes), growing into one and swept back into the other."""

from __future__ import annotations

import math
import sys
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.events import SEGMENT_TYPES
from streams.domain.family import TINY_MAX, Family

USERS = [f"u{i}" for i in range(3 * TINY_MAX)]
weights_st = st.one_of(st.sampled_from([0.0, -0.0, 0.5, 1.0, 0.1, 5e-324]),
                       st.floats(0.0, 1.0))
thresholds_st = st.one_of(st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0, 0.1]),
                          st.floats(-0.5, 1.5))

put_st = st.tuples(st.just("put"), st.sampled_from(USERS), st.none() | weights_st,
                   st.booleans(), st.integers(0, 50))
forget_st = st.tuples(st.just("forget"), st.sampled_from(USERS))
sweep_st = st.tuples(st.just("sweep"), st.integers(0, 50))
ops_st = st.lists(st.one_of(put_st, put_st, put_st, forget_st, sweep_st), max_size=120)


def _members(fam: Family, segment_type: str) -> list[float]:
    out = []
    for _, rec in fam.records():
        if rec.weight is None:
            continue
        if segment_type == "growth" or rec.in_history == (segment_type == "base"):
            out.append(rec.weight)
    return out


def _check(fam: Family, model: dict[str, tuple[float | None, bool]], m: float) -> None:
    assert {u: (r.weight, r.in_history) for u, r in fam.records()} == model
    for t in SEGMENT_TYPES:
        members = _members(fam, t)  # (the bound a ranking orders families by, domain/ranking.py)
        assert fam.members(t) == ((len(members), max(members)) if members else (0, 0.0))
        selected = [w for w in members if w >= m]
        count, mean = fam.stats_at_least(t, m)
        assert fam.count_at_least(t, m) == count == len(selected)
        if not selected:
            assert mean == 0.0
            continue
        assert min(selected) <= mean <= max(selected)
        if fam.indexes is None:  # a scan sums in ascending order, as a small index does
            assert mean == min(max(sum(sorted(selected), 0.0) / len(selected), min(selected)),
                               max(selected))
        else:
            assert math.isclose(mean, math.fsum(selected) / len(selected), rel_tol=1e-12)


@settings(max_examples=400, deadline=None)
@given(ops=ops_st, m=thresholds_st, rebuilt=st.booleans())
def test_counts_and_strengths_equal_brute_force(ops: list[tuple[object, ...]], m: float,
                                                rebuilt: bool) -> None:
    fam = Family()
    model: dict[str, tuple[float | None, bool]] = {}
    withdrawn_at: dict[str, int] = {}
    slot_hist: dict[str, bool] = {}  # per slot held (forgotten ones too), as stored
    slot_weight: dict[str, float | None] = {}
    for ts, op in enumerate(ops, 1):
        if op[0] == "put":
            _, user, weight, in_history, _ = op
            assert isinstance(user, str) and isinstance(in_history, bool)
            assert weight is None or isinstance(weight, float)
            if rebuilt:
                fam.load(user, weight, in_history, ts, ts, "n")
            else:
                assert fam.put(user, weight, in_history, ts, ts, "n") is not None
            if (not rebuilt and weight is None and user in slot_hist
                    and slot_weight[user] is None):
                in_history = slot_hist[user]  # put keeps the flag of a withdrawal withdrawn
            slot_hist[user], slot_weight[user] = in_history, weight
            model[user] = (None if weight is None else weight + 0.0, in_history)
            if weight is None:
                withdrawn_at[user] = ts
        elif op[0] == "forget":
            user = str(op[1])
            if fam.forget(user, indexed=not rebuilt):
                model.pop(user, None)
                slot_weight[user] = None
        else:
            before = ts - int(op[1])  # type: ignore[call-overload]
            gone, _ = fam.sweep(before)
            for user in gone:
                assert model.pop(user)[0] is None and withdrawn_at[user] < before
            for user in list(slot_hist):
                if user not in model:
                    del slot_hist[user], slot_weight[user]
        assert (fam.indexes is None) == (rebuilt or isinstance(fam.slots, list))
        assert isinstance(fam.slots, dict) or len(fam.slots) <= TINY_MAX
    _check(fam, model, m)
    if rebuilt:
        fam.build_indexes()
        _check(fam, model, m)
        assert (fam.indexes is None) == isinstance(fam.slots, list)


def test_a_family_grows_out_of_tiny_and_is_swept_back() -> None:
    fam = Family()
    for i in range(TINY_MAX):
        fam.put(f"u{i}", i / TINY_MAX, i % 2 == 0, 1, i, "n")
    assert isinstance(fam.slots, list) and fam.indexes is None
    fam.put("last", 1.0, True, 1, TINY_MAX, "n")
    assert isinstance(fam.slots, dict) and fam.indexes is not None
    assert fam.count_at_least("growth", 0.0) == TINY_MAX + 1
    fam.put("last", 1.0, True, 3, 99, "n")  # the newest event: the name comes from it
    for i in range(TINY_MAX):
        fam.put(f"u{i}", None, False, 2, 100 + i, "n")
    assert fam.sweep(3) == ([f"u{i}" for i in range(TINY_MAX)], None)
    assert fam.slots == ["last"] and fam.indexes is None
    assert fam.stats_at_least("base", 0.5) == (1, 1.0)
    assert fam.stats_at_least("discovery", 0.0) == (0, 0.0)


def test_a_weight_out_of_range_stores_nothing() -> None:
    fam = Family()
    for weight in (1.5, -0.1, math.nan):
        try:
            fam.put("u", weight, True, 1, 1, "n")
        except ValueError:
            pass
        else:
            raise AssertionError(weight)
    assert len(fam) == 0 and fam.name == ""


def test_the_withdrawal_the_name_comes_from_is_kept_while_the_family_has_members() -> None:
    fam = Family()
    fam.put("member", 0.5, True, 1, 0, "Old name")
    fam.put("gone", None, False, 2, 1, "New name")  # the newest event names the family
    assert fam.sweep(10) == ([], None)  # older than the watermark, but it names the family
    assert fam.name == "New name" and set(fam.slots) == {"member", "gone"}
    assert not fam.holds("gone", 10)  # forgotten all the same
    fam.put("member", 0.6, True, 11, 2, "Newest")
    assert fam.sweep(10) == (["gone"], None)  # no longer the name's source
    lonely = Family()
    lonely.put("gone", None, False, 2, 1, "n")
    assert lonely.sweep(10) == (["gone"], None)  # no member to name: freed


@settings(max_examples=200, deadline=None)
@given(weight=st.none() | weights_st, in_history=st.booleans(),
       ts=st.integers(-(1 << 63), (1 << 63) - 1), offset=st.integers(0, (1 << 63) - 1))
def test_a_slot_holds_any_weight_flag_and_order_exactly(weight: float | None, in_history: bool,
                                                        ts: int, offset: int) -> None:
    # One column holds the order and the weight's bits, with in_history in the sign bit.
    fam = Family()
    fam.put("other", 0.25, not in_history, ts, offset, "n")
    fam.put("u", weight, in_history, ts, offset, "n")
    rec = fam.get("u")
    assert rec is not None and (rec.weight, rec.in_history, rec.ts, rec.offset) == (
        weight, in_history, ts, offset)
    assert rec.weight is None or math.copysign(1.0, rec.weight) == 1.0  # -0.0 is held as 0.0
    assert fam.get("other") == (0.25, not in_history, ts, offset)


def test_a_tiny_family_holds_one_exact_size_column() -> None:
    fam = Family()
    for i in range(TINY_MAX):
        fam.put(f"u{i}", i / TINY_MAX, i % 2 == 0, 1, i, "n")
        exact = array("q", [0] * (2 + 3 * (i + 1)))
        assert sys.getsizeof(fam.cols) == sys.getsizeof(exact)
