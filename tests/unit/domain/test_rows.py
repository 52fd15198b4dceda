"""The contract's one order of listed segments (domain/rows.py)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.domain.rows import SegmentRow, contract_order, merge_top, sort_key, top


def row(user_count: int, basis_id: str = "b", action: str = "view",
        name: str = "n") -> SegmentRow:
    return SegmentRow("growth", "label", basis_id, action, name, user_count, 0.5)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (row(2), row(1)),  # user_count descending
        (row(10, basis_id="z"), row(9, basis_id="a")),
        (row(1, basis_id="a"), row(1, basis_id="b")),  # then basis id ascending
        (row(1, basis_id="B"), row(1, basis_id="a")),  # code point order
        (row(1, action="purchase"), row(1, action="view")),  # then action ascending
        (row(1, name="a"), row(1, name="b")),  # tie-break: name
    ],
)
def test_sort_key_orders(first: SegmentRow, second: SegmentRow) -> None:
    assert sort_key(first) < sort_key(second)
    assert contract_order([second, first]) == [first, second]


_rows = st.builds(
    row,
    user_count=st.integers(1, 5),
    basis_id=st.sampled_from(["a", "b", "B", "é"]),
    action=st.sampled_from(["view", "purchase"]),
    name=st.sampled_from(["x", "y"]),
)


@given(st.lists(_rows, max_size=30))
def test_the_order_is_total_for_the_rows_of_one_query(rows: list[SegmentRow]) -> None:
    ordered = contract_order(list(rows))
    assert contract_order(list(reversed(rows))) == ordered  # independent of input order
    for a, b in itertools.pairwise(ordered):
        assert a.user_count >= b.user_count
        if a.user_count == b.user_count:
            assert a.segment_basis_id <= b.segment_basis_id
            if a.segment_basis_id == b.segment_basis_id:
                assert a.action_type <= b.action_type
        if sort_key(a) == sort_key(b):
            assert a == b


# -- page pushdown: each partition's first rows, k-way merged -------------------------------------

@st.composite
def _partitioned(draw: st.DrawFn) -> list[list[SegmentRow]]:
    """Distinct segments (many ties on user_count) dealt to partitions at random."""
    families = draw(st.sets(st.tuples(st.sampled_from(["a", "b", "B", "é", "a0", "ab"]),
                                      st.sampled_from(["view", "purchase", "v"])),
                            max_size=18))
    partitions = draw(st.integers(1, 5))
    parts: list[list[SegmentRow]] = [[] for _ in range(partitions)]
    for basis_id, action in sorted(families):
        parts[draw(st.integers(0, partitions - 1))].append(
            row(draw(st.integers(1, 4)), basis_id, action, draw(st.sampled_from(["x", "y"]))))
    return parts


@given(_partitioned(), st.integers(1, 8), st.integers(1, 7))
def test_merged_first_rows_equal_a_brute_force_sort(parts: list[list[SegmentRow]], page: int,
                                                    size: int) -> None:
    every = sorted((r for part in parts for r in part),
                   key=lambda r: (-r.user_count, r.segment_basis_id, r.action_type))
    limit = page * size
    merged = merge_top([top(part, limit) for part in parts], limit)
    assert merged == every[:limit]
    assert merged[(page - 1) * size:] == every[(page - 1) * size:limit]  # the page itself
    assert sum(map(len, parts)) == len(every)  # the total: each part's count, summed
    assert merge_top([top(part, None) for part in parts], None) == every
    assert top([r for part in parts for r in part], limit) == every[:limit]



@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 10**6)), max_size=300,
                unique_by=lambda t: t[1]), st.integers(1, 400))
def test_top_by_selection_or_by_sort_is_the_sorted_prefix(counts: list[tuple[int, int]],
                                                          limit: int) -> None:
    rows = [row(c, f"b{n}") for c, n in counts]
    assert top(rows, limit) == sorted(rows, key=sort_key)[:limit]
