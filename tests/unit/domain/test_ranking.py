"""The first rows of a query without counting every segment (domain/ranking.py, FamilyStore.top)
against a brute force: every family counted from its records, every row sorted. Any sequence
of events, withdrawals, tombstones, sweeps and queries (rankings and threshold views kept up to
date between them) gives the brute force's first rows and total, ties included."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain import store as store_module
from streams.domain.events import SEGMENT_TYPES, Event
from streams.domain.family import Family
from streams.domain.ranking import BLOCK, Ranking, ThresholdView, _Ordered, first_of
from streams.domain.rows import SegmentRow
from streams.domain.store import RANKINGS_MAX, FamilyStore

PROGRAM = "p"
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 0.3)  # thresholds equal to weights: ties at m
# Few basis ids, several actions: families of equal counts ordered by basis_id, then action.
FAMILIES = [(basis, basis_id, action) for basis in ("label", "asset")
            for basis_id in ("a", "B", "b", "é") for action in ("view", "buy")]


def brute(store: FamilyStore, segment_type: str, basis: str, m: float
          ) -> list[tuple[int, str, str, str, float]]:
    """(count, basis_id, action, name, mean) of every listed segment, from the records alone,
    sorted in the contract's order."""
    out = []
    for (program, b, basis_id, action), fam in store.families.items():
        if program != PROGRAM or b != basis:
            continue
        weights = [rec.weight for _, rec in fam.records() if rec.weight is not None
                   and rec.weight >= m and (segment_type == "growth"
                                            or rec.in_history == (segment_type == "base"))]
        if weights:
            out.append((len(weights), basis_id, action, fam.name, sum(weights) / len(weights)))
    out.sort(key=lambda r: (-r[0], r[1], r[2]))
    return out


def check(store: FamilyStore, segment_type: str, basis: str, m: float, limit: int) -> None:
    rows, total = store.top(PROGRAM, segment_type, basis, m, limit)
    expected = brute(store, segment_type, basis, m)
    assert total == len(expected)
    got = [(r.user_count, r.segment_basis_id, r.action_type, r.name) for r in rows]
    assert got == [e[:4] for e in expected[:limit]]
    for r, e in zip(rows, expected, strict=False):
        assert r.strength == pytest.approx(e[4], rel=1e-9)
        assert (r.segment_type, r.segment_basis) == (segment_type, basis)
    # the same rows as the full answer's first ones (the path every other query takes)
    full = store.query(PROGRAM, segment_type, basis, m)
    assert rows == sorted(full, key=lambda r: (-r.user_count, r.segment_basis_id,
                                               r.action_type))[:limit]


_event = st.tuples(st.just("event"), st.integers(0, len(FAMILIES) - 1), st.integers(0, 11),
                   st.sampled_from((*WEIGHTS, None)), st.booleans(), st.integers(-3, 5),
                   st.sampled_from(("N1", "N2")))
_tombstone = st.tuples(st.just("tombstone"), st.integers(0, len(FAMILIES) - 1),
                       st.integers(0, 11))
_expire = st.tuples(st.just("expire"))
# Few thresholds, so that many are asked again after changes: threshold views are built.
_query = st.tuples(st.just("query"), st.sampled_from(SEGMENT_TYPES),
                   st.sampled_from(("label", "asset")), st.sampled_from((0.25, 0.3, 0.5, 0.0)),
                   st.integers(1, 7))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_event, _event, _event, _tombstone, _expire, _query, _query),
                max_size=120), st.integers(1, 4))
def test_top_equals_the_brute_force_after_any_changes(ops: list[tuple[object, ...]],
                                                      step: int) -> None:
    """(``step``: families a view counts per query, so that views are built over several
    queries with changes between them.)"""
    view_step = store_module.VIEW_STEP
    store_module.VIEW_STEP = step
    try:
        apply_and_check(ops)
    finally:
        store_module.VIEW_STEP = view_step


def apply_and_check(ops: list[tuple[object, ...]]) -> None:
    store = FamilyStore(grace_ms=20)  # a short grace: withdrawals forgotten, families dropped
    ts = 1000
    offset = 0
    for op in ops:
        kind = op[0]
        if kind == "event":
            _, f, user, weight, in_history, dt, name = op
            basis, basis_id, action = FAMILIES[f]  # type: ignore[index]
            ts += dt  # type: ignore[operator]
            offset += 1
            store.apply(Event(PROGRAM, f"u{user}", basis, basis_id, name, action,  # type: ignore[arg-type]
                              weight, in_history, ts), offset)  # type: ignore[arg-type]
        elif kind == "tombstone":
            _, f, user = op
            basis, basis_id, action = FAMILIES[f]  # type: ignore[index]
            store.load_tombstone((PROGRAM, basis, basis_id, action), f"u{user}")
        elif kind == "expire":
            store.take_dirty()  # (as the ledger does: empty families may then be dropped)
            store.expire()
        else:
            _, segment_type, basis, m, limit = op
            check(store, segment_type, basis, m, limit)  # type: ignore[arg-type]
            check(store, segment_type, basis, m, limit)  # (the view, from the second time)
    for segment_type in SEGMENT_TYPES:
        for basis in ("label", "asset"):
            for m in WEIGHTS:
                check(store, segment_type, basis, m, 3)


_one_query = st.tuples(st.just("query"), st.just("growth"), st.just("label"), st.just(0.5),
                      st.integers(1, 7))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_event, _event, _tombstone, _expire, _one_query), max_size=80),
       st.integers(1, 3))
def test_a_view_built_over_several_queries_with_changes_between(
        ops: list[tuple[object, ...]], step: int) -> None:
    """One query asked again and again: its view is made, built a few families at a time
    with changes between the steps, then kept up to date."""
    view_step = store_module.VIEW_STEP
    store_module.VIEW_STEP = step
    try:
        apply_and_check(ops)
    finally:
        store_module.VIEW_STEP = view_step


def test_large_families_and_many_of_them() -> None:
    """Indexed families (beyond TINY_MAX users, some beyond the index's small mode), a ranking
    of several blocks, thresholds asked once (ranking) and again (view), between changes."""
    rng = random.Random(3)
    store = FamilyStore()
    offset = 0
    families = [(f"l{i}", ("view", "buy")[i % 2]) for i in range(3 * BLOCK)]
    sizes = [rng.choice((1, 2, 3, 9, 20, 200)) for _ in families]
    for (basis_id, action), size in zip(families, sizes, strict=True):
        for u in range(size):
            offset += 1
            store.apply(Event(PROGRAM, f"u{u}", "label", basis_id, basis_id, action,
                              round(rng.random(), 2), rng.random() < 0.5, 1), offset)
    for round_ in range(6):
        for m in (0.0, 0.5, 0.97, round(rng.random(), 2)):
            for limit in (1, 10, 100, 2000):
                for segment_type in SEGMENT_TYPES:
                    check(store, segment_type, "label", m, limit)
        for _ in range(300):  # weights move, users come and go, between the queries
            offset += 1
            basis_id, action = rng.choice(families)
            weight = None if rng.random() < 0.2 else round(rng.random(), 2)
            store.apply(Event(PROGRAM, f"u{rng.randrange(250)}", "label", basis_id,
                              f"n{round_}", action, weight, rng.random() < 0.5, 2 + round_),
                        offset)


def test_views_and_rankings_are_bounded_and_dropped_with_their_families() -> None:
    store = FamilyStore(grace_ms=10)
    store.apply(Event(PROGRAM, "u", "label", "a", "a", "view", 0.5, True, 1), 1)
    for k in range(2 * RANKINGS_MAX):
        m = k / (4 * RANKINGS_MAX)
        for again in range(2):  # (a view from the second time, after a change)
            store.apply(Event(PROGRAM, "u", "label", "a", "a", "view", 0.5, True, 1 + k),
                        2 * k + again + 2)
            assert store.top(PROGRAM, "growth", "label", m, 5)[1] == 1
    assert len(store._rankings) == RANKINGS_MAX
    assert any(isinstance(r, ThresholdView) for r in store._rankings.values())
    store.apply(Event(PROGRAM, "u", "label", "a", "a", "view", None, True, 50), 100)
    store.apply(Event(PROGRAM, "v", "label", "z", "z", "view", 0.5, True, 100), 101)
    store.take_dirty()  # (the ledger took the count changes: empty families may go)
    store.expire()  # family a forgotten and dropped: its program and basis keep z only
    assert store.top(PROGRAM, "growth", "label", 0.0, 5)[0] == [
        SegmentRow("growth", "label", "z", "view", "z", 1, 0.5)]
    store.apply(Event(PROGRAM, "v", "label", "z", "z", "view", None, True, 200), 102)
    store.apply(Event(PROGRAM, "w", "asset", "y", "y", "view", 0.5, True, 300), 103)
    store.take_dirty()
    store.expire()
    assert store.top(PROGRAM, "growth", "label", 0.0, 5) == ([], 0)
    assert not store._rankings and not store._ranked


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000)), max_size=400))
def test_ordered_blocks_stay_sorted(ops: list[tuple[bool, int]]) -> None:
    held: dict[int, tuple[int, str, str, None]] = {}
    order = _Ordered([])
    for add, n in ops:
        if n in held:
            order.remove(held.pop(n))  # type: ignore[arg-type]
        elif add:
            held[n] = (-(n % 7), f"{n:05d}", "a", None)
            order.add(held[n])  # type: ignore[arg-type]
    assert list(order) == sorted(held.values())
    assert len(order) == len(held)
    assert all(len(b) <= BLOCK for b in order.blocks)
    assert order.maxes == [b[-1] for b in order.blocks]


def test_a_ranking_counts_only_what_the_page_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of it: families are counted only down to the k-th best bound."""
    store = FamilyStore()
    for i in range(5000):
        for u in range(1 + 20 * (i == 4999)):
            store.apply(Event(PROGRAM, f"u{u}", "label", f"l{i:04d}", "n", "view", 0.9,
                              True, 1), i * 100 + u)
    ranking = Ranking("growth", store.by_program[PROGRAM]["label"])
    counted = 0
    count_at_least = Family.count_at_least

    def counting(fam: Family, segment_type: str, m: float) -> int:
        nonlocal counted
        counted += 1
        return count_at_least(fam, segment_type, m)

    monkeypatch.setattr(Family, "count_at_least", counting)
    rows = ranking.first(0.5, 10)
    assert [r.segment_basis_id for r in rows] == ["l4999", *(f"l{i:04d}" for i in range(9))]
    assert counted <= 2 * 10 + 64 + 1


def test_a_view_follows_a_new_name_with_no_other_change() -> None:
    store = FamilyStore()
    store.apply(Event(PROGRAM, "u", "label", "a", "old", "view", 0.5, True, 1), 1)
    for offset in (2, 3):  # asked twice, with a change between: a threshold view
        store.apply(Event(PROGRAM, "v", "label", "b", "b", "view", 0.5, True, 1), offset)
        store.top(PROGRAM, "growth", "label", 0.5, 5)
    assert isinstance(store._rankings[(PROGRAM, "growth", "label", 0.5)], ThresholdView)
    store.apply(Event(PROGRAM, "u", "label", "a", "new", "view", 0.5, True, 2), 4)
    rows, _ = store.top(PROGRAM, "growth", "label", 0.5, 5)
    assert [r.name for r in rows] == ["new", "b"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 9), st.sampled_from(WEIGHTS),
                          st.booleans()), max_size=150),
       st.sampled_from(SEGMENT_TYPES), st.sampled_from(WEIGHTS), st.integers(1, 12))
def test_rankings_of_several_partitions_scanned_together(
        events: list[tuple[int, int, float, bool]], segment_type: str, m: float,
        limit: int) -> None:
    """first_of over one worker's partitions (a family in one of them) equals the brute force
    over all of them."""
    stores = [FamilyStore() for _ in range(3)]
    for offset, (f, user, weight, in_history) in enumerate(events):
        # A family's partition follows from the family, as the partitioner's does.
        stores[f % 3].apply(Event(PROGRAM, f"u{user}", "label", f"b{f % 7}", "n",
                                            ("view", "buy", "add")[f // 7 % 3], weight,
                                            in_history, 1), offset)
    rankings = []
    for store in stores:
        if store.versions:
            ranking = store._ranking(PROGRAM, segment_type, "label")
            ranking.sync(store.families)
            rankings.append(ranking)
    rows = first_of(rankings, m, limit)
    expected = sorted((e for store in stores for e in brute(store, segment_type, "label", m)),
                      key=lambda r: (-r[0], r[1], r[2]))
    assert [(r.user_count, r.segment_basis_id, r.action_type) for r in rows] == [
        e[:3] for e in expected[:limit]]
    assert sum(r.total(m) for r in rankings) == len(expected)
