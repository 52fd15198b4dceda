"""Tests for streams.threshold_index against brute-force models (no timing assertions)."""

from __future__ import annotations

import math
import random
from bisect import bisect_left

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from streams.domain.threshold_index import (
    DEFAULT_LOAD,
    SMALL_MAX,
    ThresholdIndex,
    strength,
    to_fixed,
)

REL = 1e-9  # the contract: means / sums within 1e-9 relative
U = 2.0**-53
TINY = 5e-324
MIN_NORMAL = 2.2250738585072014e-308
LOADS = [1, 2, 3, 4, 8, DEFAULT_LOAD]

STATEFUL = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

weights_st = st.one_of(
    st.floats(min_value=0.0, max_value=1.0),
    st.sampled_from([0.0, 1.0, 0.5, 0.731, 0.25, -0.0]),
    st.sampled_from([TINY, 2 * TINY, 3 * TINY, 1e-310, MIN_NORMAL, 1e-300]),  # subnormals
    st.floats(min_value=0.0, max_value=3 * MIN_NORMAL),
    st.sampled_from([0.1, 0.2, 0.3]),  # heavy duplicates
)
thresholds_st = st.one_of(
    st.floats(min_value=0.0, max_value=1.0),
    st.sampled_from([0.0, 0.25, 0.5, 0.731, 1.0, -0.0, -1.0, 2.0, TINY, 0.2, 0.3]),
    st.floats(min_value=-0.5, max_value=1.5),
)


def _bound(load: int) -> float:
    """The module docstring's relative error bound for a mean, (K + 2) u, plus slack."""
    k = max(load, SMALL_MAX)
    return (k + 3) * U


def _check_query(index: ThresholdIndex, model: list[float], m: float, load: int) -> None:
    selected = [w for w in model if w >= m]
    count = len(selected)
    assert index.count_at_least(m) == count
    exact_sum = math.fsum(selected)
    got_sum = index.sum_at_least(m)
    got_count, got_mean = index.stats_at_least(m)
    assert got_count == count
    if not count:
        assert got_sum == 0.0
        assert (got_count, got_mean) == (0, 0.0)
        return
    expected_mean = exact_sum / count
    assert min(selected) <= got_mean <= max(selected)  # a mean of weights in [0, 1] is too
    assert abs(got_sum - exact_sum) <= REL * exact_sum
    assert abs(got_mean - expected_mean) <= REL * expected_mean
    # The documented (much tighter) bound; a subnormal mean may be off by one grid step.
    assert abs(got_sum - exact_sum) <= _bound(load) * exact_sum
    assert abs(got_mean - expected_mean) <= _bound(load) * expected_mean + TINY


class IndexMachine(RuleBasedStateMachine):
    """Random interleavings of add / remove / update / failed remove / queries."""

    def __init__(self) -> None:
        super().__init__()
        self.load = DEFAULT_LOAD
        self.index = ThresholdIndex()
        self.model: list[float] = []

    @initialize(load=st.sampled_from(LOADS))
    def setup(self, load: int) -> None:
        self.load = load
        self.index = ThresholdIndex(load=load)

    @rule(w=weights_st)
    def add(self, w: float) -> None:
        self.index.add(w)
        self.model.append(w + 0.0)

    @rule(ws=st.lists(weights_st, min_size=20, max_size=150))
    def add_many(self, ws: list[float]) -> None:
        # Big enough to leave small mode (SMALL_MAX) with the default load as well.
        for w in ws:
            self.index.add(w)
            self.model.append(w + 0.0)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.model) - 1))
        self.index.remove(self.model.pop(i))

    @precondition(lambda self: self.model)
    @rule(data=st.data(), fraction=st.floats(0.1, 1.0))
    def remove_many(self, data: st.DataObject, fraction: float) -> None:
        rng = random.Random(data.draw(st.integers(0, 2**32)))
        for _ in range(max(1, int(len(self.model) * fraction))):
            self.index.remove(self.model.pop(rng.randrange(len(self.model))))

    @precondition(lambda self: self.model)
    @rule(data=st.data(), w=weights_st)
    def update(self, data: st.DataObject, w: float) -> None:
        i = data.draw(st.integers(0, len(self.model) - 1))
        self.index.remove(self.model[i])
        self.index.add(w)
        self.model[i] = w + 0.0

    @rule(w=weights_st)
    def remove_missing(self, w: float) -> None:
        if w in self.model:
            return
        before = self.index.weights()
        with pytest.raises(KeyError):
            self.index.remove(w)
        assert self.index.weights() == before
        assert len(self.index) == len(self.model)

    @rule(m=thresholds_st)
    def query(self, m: float) -> None:
        _check_query(self.index, self.model, m, self.load)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def query_present(self, data: st.DataObject) -> None:
        m = data.draw(st.sampled_from(self.model))
        _check_query(self.index, self.model, m, self.load)
        _check_query(self.index, self.model, math.nextafter(m, 2.0), self.load)
        _check_query(self.index, self.model, math.nextafter(m, -1.0), self.load)

    @invariant()
    def fixed_thresholds(self) -> None:
        for m in (0.0, 0.25, 0.5, 0.731, 1.0):
            _check_query(self.index, self.model, m, self.load)

    @invariant()
    def same_multiset(self) -> None:
        assert len(self.index) == len(self.model)
        got = self.index.weights()
        assert got == sorted(self.model)
        assert all(math.copysign(1.0, w) == 1.0 for w in got)  # -0.0 stored as 0.0


TestIndexMachine = IndexMachine.TestCase
TestIndexMachine.settings = STATEFUL


class SegmentMachine(RuleBasedStateMachine):
    """growth == base + discovery: every member is in growth and in exactly one side."""

    users = Bundle("users")

    def __init__(self) -> None:
        super().__init__()
        self.load = DEFAULT_LOAD
        self.growth = ThresholdIndex()
        self.base = ThresholdIndex()
        self.discovery = ThresholdIndex()
        self.members: dict[int, tuple[float, bool]] = {}
        self.next_user = 0

    @initialize(load=st.sampled_from(LOADS))
    def setup(self, load: int) -> None:
        self.load = load
        self.growth = ThresholdIndex(load=load)
        self.base = ThresholdIndex(load=load)
        self.discovery = ThresholdIndex(load=load)

    def _side(self, in_history: bool) -> ThresholdIndex:
        return self.base if in_history else self.discovery

    def _join(self, weight: float, in_history: bool) -> int:
        user = self.next_user
        self.next_user += 1
        self.members[user] = (weight, in_history)
        self.growth.add(weight)
        self._side(in_history).add(weight)
        return user

    @rule(target=users, weight=weights_st, in_history=st.booleans())
    def join(self, weight: float, in_history: bool) -> int:
        return self._join(weight, in_history)

    @rule(
        target=users,
        entries=st.lists(st.tuples(weights_st, st.booleans()), min_size=20, max_size=150),
    )
    def join_many(self, entries: list[tuple[float, bool]]) -> object:
        return multiple(*(self._join(w, h) for w, h in entries))

    @rule(user=consumes(users))
    def leave(self, user: int) -> None:
        weight, in_history = self.members.pop(user)
        self.growth.remove(weight)
        self._side(in_history).remove(weight)

    @rule(user=users)
    def move(self, user: int) -> None:
        """The user's history flag flips: base <-> discovery."""
        if user not in self.members:
            return
        weight, in_history = self.members[user]
        self._side(in_history).remove(weight)
        self._side(not in_history).add(weight)
        self.members[user] = (weight, not in_history)

    @rule(user=users, weight=weights_st)
    def reweigh(self, user: int, weight: float) -> None:
        if user not in self.members:
            return
        old, in_history = self.members[user]
        self.growth.remove(old)
        self.growth.add(weight)
        self._side(in_history).remove(old)
        self._side(in_history).add(weight)
        self.members[user] = (weight, in_history)

    @rule(m=thresholds_st)
    def growth_is_base_plus_discovery(self, m: float) -> None:
        g, b, d = self.growth, self.base, self.discovery
        assert g.count_at_least(m) == b.count_at_least(m) + d.count_at_least(m)
        g_sum = g.sum_at_least(m)
        parts = b.sum_at_least(m) + d.sum_at_least(m)
        assert abs(g_sum - parts) <= REL * max(g_sum, parts)
        model = [w for w, _ in self.members.values()]
        _check_query(g, model, m, self.load)

    @invariant()
    def sizes(self) -> None:
        assert len(self.growth) == len(self.members)
        assert len(self.base) + len(self.discovery) == len(self.members)
        assert len(self.base) == sum(1 for _, h in self.members.values() if h)


TestSegmentMachine = SegmentMachine.TestCase
TestSegmentMachine.settings = STATEFUL


# -- edge cases ------------------------------------------------------------------------------


@pytest.mark.parametrize("load", LOADS)
def test_empty(load: int) -> None:
    index = ThresholdIndex(load=load)
    assert len(index) == 0
    assert index.weights() == []
    for m in (-1.0, 0.0, 0.5, 1.0, 2.0):
        assert index.count_at_least(m) == 0
        assert index.sum_at_least(m) == 0.0
        assert index.stats_at_least(m) == (0, 0.0)


@pytest.mark.parametrize("load", LOADS)
def test_inclusive_thresholds_and_extremes(load: int) -> None:
    index = ThresholdIndex(load=load)
    model = [0.0, 0.0, 0.25, 0.5, 0.5, 0.5, 0.731, 1.0, 1.0] * 30
    for w in model:
        index.add(w)
    assert index.count_at_least(0.5) == 6 * 30  # >= is inclusive
    assert index.count_at_least(math.nextafter(0.5, 1.0)) == 3 * 30
    assert index.count_at_least(1.0) == 60
    assert index.stats_at_least(1.0) == (60, 1.0)
    assert index.count_at_least(0.0) == len(model)
    assert index.count_at_least(-3.0) == len(model)
    assert index.stats_at_least(math.nextafter(1.0, 2.0)) == (0, 0.0)
    assert index.stats_at_least(0.0) == index.stats_at_least(-1.0)
    for m in (0.0, 0.25, 0.3, 0.5, 0.731, 0.9, 1.0, 1.5):
        _check_query(index, model, m, load)


@pytest.mark.parametrize("load", LOADS)
def test_subnormal_weights_are_exact(load: int) -> None:
    index = ThresholdIndex(load=load)
    model = [TINY] * 300 + [2 * TINY] * 5 + [3 * TINY] + [0.0] * 7
    for w in model:
        index.add(w)
    for m in (0.0, TINY, 2 * TINY, 3 * TINY):
        selected = [w for w in model if w >= m]
        count, mean = index.stats_at_least(m)
        assert count == len(selected)
        assert mean == math.fsum(selected) / len(selected)  # bit-exact, not just 1e-9
        assert index.sum_at_least(m) == math.fsum(selected)
    assert index.stats_at_least(4 * TINY) == (0, 0.0)


@pytest.mark.parametrize("load", LOADS)
def test_all_duplicates(load: int) -> None:
    index = ThresholdIndex(load=load)
    for _ in range(1000):
        index.add(0.731)
    count, mean = index.stats_at_least(0.731)
    assert count == 1000
    assert mean == pytest.approx(0.731, rel=1e-15)
    assert index.count_at_least(math.nextafter(0.731, 1.0)) == 0
    for n in range(1000, 0, -1):
        assert index.count_at_least(0.5) == n
        index.remove(0.731)
    assert len(index) == 0
    assert index.stats_at_least(0.0) == (0, 0.0)


@pytest.mark.parametrize("load", LOADS)
@pytest.mark.parametrize("size", [0, 5, 200, 2000])
def test_remove_missing_raises_and_keeps_state(load: int, size: int) -> None:
    rng = random.Random(size)
    index = ThresholdIndex(load=load)
    model = [rng.choice([0.5, rng.random()]) for _ in range(size)]
    for w in model:
        index.add(w)
    before = index.weights()
    probes = [0.25 + 1e-12, math.nextafter(0.5, 1.0), math.nextafter(0.5, 0.0), 1.0, 0.0, TINY]
    for missing in [*probes, math.nan]:
        if missing in model:
            continue
        with pytest.raises(KeyError):
            index.remove(missing)
        assert index.weights() == before
        assert len(index) == size
        for m in (0.0, 0.5, 0.9):
            _check_query(index, model, m, load)


def test_add_validates_and_normalises() -> None:
    index = ThresholdIndex()
    for bad in (-0.1, 1.0000000000000002, math.nan, math.inf, -math.inf, 2):
        with pytest.raises(ValueError):
            index.add(bad)
    assert len(index) == 0
    index.add(-0.0)
    index.add(1)
    index.add(False)
    got = index.weights()
    assert got == [0.0, 0.0, 1.0]
    assert all(type(w) is float and math.copysign(1.0, w) == 1.0 for w in got)
    index.remove(0)  # equal numbers are the same weight
    index.remove(-0.0)
    index.remove(1.0)
    assert len(index) == 0
    with pytest.raises(ValueError):
        ThresholdIndex(load=0)


@pytest.mark.parametrize("load", [1, 4, DEFAULT_LOAD])
def test_grow_and_shrink_through_modes(load: int) -> None:
    """Small -> big -> small transitions keep every answer right (sorted and reversed)."""
    rng = random.Random(load)
    model = sorted(rng.random() for _ in range(3 * DEFAULT_LOAD + 7))
    for order in (model, model[::-1]):
        index = ThresholdIndex(load=load)
        current: list[float] = []
        for k, w in enumerate(order):
            index.add(w)
            current.append(w)
            if k % 37 == 0:
                _check_query(index, current, rng.random(), load)
        for k, w in enumerate(list(current)):
            if k % 41 == 0:
                _check_query(index, current, w, load)
            index.remove(w)
            current.remove(w)
        assert len(index) == 0
        assert index.stats_at_least(0.0) == (0, 0.0)


def test_merge_that_overflows_resplits() -> None:
    """A short block merged into a nearly full neighbour must be split again."""
    index = ThresholdIndex(load=4)  # blocks of 2..8 weights, small mode up to 8
    model = [k / 100 for k in range(1, 10)] + [0.5, 0.6, 0.7]  # -> blocks of 4 and 8
    for w in model:
        index.add(w)
    for w in (0.01, 0.02, 0.03):  # first block drops to 1 < 2: merge (9 > 8) then split
        index.remove(w)
        model.remove(w)
        for m in (0.0, 0.04, 0.05, 0.08, 0.55, 0.7, 1.0):
            _check_query(index, model, m, 4)
    assert index.weights() == sorted(model)
    assert repr(index) == "ThresholdIndex(<9 weights>)"


@pytest.mark.parametrize("load", [1, 2, 3, 4, 5])
def test_seeded_random_walks_with_tiny_blocks(load: int) -> None:
    """Many splits/merges/promotions/demotions, checked every few operations."""
    rng = random.Random(load)
    index = ThresholdIndex(load=load)
    model: list[float] = []
    for step in range(6000):
        target = 40 if (step // 1500) % 2 else 400  # grow, shrink, grow, shrink
        if not model or (len(model) < target and rng.random() < 0.7):
            w = rng.choice([rng.random(), 0.5, 0.0, 1.0, TINY, rng.choice([0.2, 0.3])])
            index.add(w)
            model.append(w)
        else:
            index.remove(model.pop(rng.randrange(len(model))))
        if step % 5 == 0:
            m = rng.choice([rng.random(), 0.0, 0.5, 1.0, 0.2, 0.3, *model[:1]])
            _check_query(index, model, m, load)
    assert index.weights() == sorted(model)


def test_strength_and_fixed_point_helpers() -> None:
    assert strength(0, 0) == 0.0
    assert strength(to_fixed(0.5) + to_fixed(0.25), 2) == 0.375
    assert strength(to_fixed(TINY) * 3, 2) == 2 * TINY  # 1.5 * TINY rounds half-to-even
    assert to_fixed(1.0) == 1 << 1074
    assert to_fixed(TINY) == 1
    ws = [random.Random(7).random() for _ in range(100)]
    total = sum(map(to_fixed, ws))
    assert strength(total, len(ws)) == pytest.approx(math.fsum(ws) / 100, rel=1e-15)


def test_a_mean_never_leaves_its_weights_range() -> None:
    """119 weights of 1.0 above 300 smaller ones: the block holding the smallest 1.0 is summed
    from its cheaper side, the prefix below the threshold, whose float sum rounds down; the mean
    at 1.0 then came out 1.0000000000000002 (when built in one sort), which a peer refuses as a
    strength (contract: the mean of weights in [0, 1])."""
    rng = random.Random(4)
    weights = [rng.random() for _ in range(300)] + [1.0] * 119
    added = ThresholdIndex()
    for w in weights:
        added.add(w)
    built = ThresholdIndex.of(list(weights))
    assert added.stats_at_least(1.0) == built.stats_at_least(1.0) == (119, 1.0)
    for index in (added, built):
        for m in (0.0, 0.5, weights[7]):
            count, mean = index.stats_at_least(m)
            selected = [w for w in weights if w >= m]
            assert count == len(selected) and min(selected) <= mean <= max(selected)
            assert index.span_at_least(m) == (min(selected), max(selected))


# -- drift -----------------------------------------------------------------------------------


def test_no_drift_after_a_million_updates() -> None:
    """1e6 mixed adds/removes; sums must match fsum of the survivors to 1e-12 relative."""
    rng = random.Random(20240601)
    index = ThresholdIndex()
    alive: list[float] = []
    pool = [1.0, 0.5, 0.731, 0.1, 1e-300, TINY, 1e-9, 0.999999999999]
    randm = rng.random
    add = index.add
    remove = index.remove
    checkpoints = {100_000, 400_000, 700_000}
    for step in range(1_000_000):
        if step in checkpoints:
            _check_drift(index, alive)
        if randm() < (0.6 if step < 300_000 else 0.5) or not alive:
            r = randm()
            w = pool[int(r * 8)] if r < 0.1 else (randm() if r < 0.7 else randm() ** 8)
            add(w)
            alive.append(w)
        else:
            i = int(randm() * len(alive))
            last = alive.pop()
            if i < len(alive):
                last, alive[i] = alive[i], last
            remove(last)
        if step % 1000 == 0:  # keep the lazy tree maintenance busy
            index.stats_at_least(randm())
    assert len(alive) > 50_000  # far beyond small mode: many blocks, splits and merges
    _check_drift(index, alive)


def _check_drift(index: ThresholdIndex, alive: list[float]) -> None:
    assert len(index) == len(alive)
    ordered = sorted(alive)
    for m in (0.0, 1e-300, 0.001, 0.25, 0.5, 0.731, 0.99, 1.0):
        j = bisect_left(ordered, m)
        tail = ordered[j:]
        count, mean = index.stats_at_least(m)
        assert count == len(tail)
        if tail:
            expected = math.fsum(tail) / len(tail)
            assert abs(mean - expected) <= 1e-12 * expected
        else:
            assert mean == 0.0


@pytest.mark.parametrize("load", [1, 3, DEFAULT_LOAD])
@pytest.mark.parametrize("size", [0, 1, SMALL_MAX, SMALL_MAX + 1, 3 * DEFAULT_LOAD + 7])
def test_built_in_one_sort_equals_added_one_by_one(load: int, size: int) -> None:
    """``ThresholdIndex.of`` (the rebuild path) answers like ``add`` per weight, and then
    keeps working through adds and removes, in both modes."""
    rng = random.Random(size)
    model = [rng.choice([rng.random(), 0.5, 0.0, -0.0, 1.0, TINY, 1]) for _ in range(size)]
    built = ThresholdIndex.of(list(model), load=load)
    added = ThresholdIndex(load=load)
    for w in model:
        added.add(w)
    assert built.weights() == added.weights()
    assert all(type(w) is float and math.copysign(1.0, w) == 1.0 for w in built.weights())
    for m in (0.0, 0.25, 0.5, 1.0, TINY, rng.random()):
        # Counts exact; means within the bound (block boundaries may differ, and with them
        # the float summation order).
        assert built.count_at_least(m) == added.count_at_least(m)
        _check_query(built, model, m, load)
    for w in model[: size // 2]:
        built.remove(w)
        model.remove(w)
    for _ in range(50):
        w = rng.random()
        built.add(w)
        model.append(w)
    for m in (0.0, 0.5, rng.random()):
        _check_query(built, model, m, load)
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError):
            ThresholdIndex.of([0.5, bad])
