"""The contract's one order of listed segments (domain/rows.py)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.domain.rows import SegmentRow, contract_order, sort_key


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
