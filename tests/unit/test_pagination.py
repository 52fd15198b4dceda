"""Ordering and paging of segment lists."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.models import SegmentCount
from api.pagination import page_count, paginate, sort_key


def seg(
    user_count: int,
    basis_id: str = "b",
    action: str = "view",
    name: str = "n",
    segment_type: str = "growth",
    basis: str = "label",
) -> SegmentCount:
    return SegmentCount.model_validate(
        {
            "segment_type": segment_type,
            "segment_basis": basis,
            "segment_basis_id": basis_id,
            "action_type": action,
            "name": name,
            "user_count": user_count,
            "strength": 0.5,
            "min_weight": 0.5,
        }
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (seg(2), seg(1)),  # user_count descending
        (seg(10, basis_id="z"), seg(9, basis_id="a")),
        (seg(1, basis_id="a"), seg(1, basis_id="b")),  # then basis id ascending
        (seg(1, basis_id="B"), seg(1, basis_id="a")),  # code point order
        (seg(1, action="purchase"), seg(1, action="view")),  # then action ascending
        (seg(1, name="a"), seg(1, name="b")),  # tie-breaks: name
        (seg(1, segment_type="base"), seg(1, segment_type="growth")),  # then segment type
        (seg(1, basis="asset"), seg(1, basis="label")),  # then basis
    ],
)
def test_sort_key_orders(first: SegmentCount, second: SegmentCount) -> None:
    assert sort_key(first) < sort_key(second)
    assert sorted([second, first], key=sort_key) == [first, second]


_segments = st.builds(
    seg,
    user_count=st.integers(0, 5),
    basis_id=st.sampled_from(["a", "b", "B", "é"]),
    action=st.sampled_from(["view", "purchase"]),
    name=st.sampled_from(["x", "y"]),
    segment_type=st.sampled_from(["growth", "base", "discovery"]),
    basis=st.sampled_from(["label", "asset"]),
)


@given(st.lists(_segments, max_size=30))
def test_sort_is_a_total_order(items: list[SegmentCount]) -> None:
    ordered = sorted(items, key=sort_key)
    assert sorted(reversed(items), key=sort_key) == ordered  # independent of input order
    for a, b in itertools.pairwise(ordered):
        assert a.user_count >= b.user_count
        if a.user_count == b.user_count:
            assert a.segment_basis_id <= b.segment_basis_id
            if a.segment_basis_id == b.segment_basis_id:
                assert a.action_type <= b.action_type
        if sort_key(a) == sort_key(b):
            assert a == b


ITEMS = list(range(10))


@pytest.mark.parametrize(
    ("page", "size", "expected"),
    [
        (1, 3, [0, 1, 2]),
        (2, 3, [3, 4, 5]),
        (4, 3, [9]),
        (5, 3, []),
        (1, 10, ITEMS),
        (2, 10, []),
        (1, 100, ITEMS),
        (1, 1, [0]),
        (10, 1, [9]),
        (11, 1, []),
        (10**30, 50, []),
        (10**4000, 1, []),
    ],
)
def test_paginate(page: int, size: int, expected: list[int]) -> None:
    assert paginate(ITEMS, page, size) == expected


def test_paginate_empty() -> None:
    assert paginate([], 1, 50) == []
    assert paginate((), 10**30, 1) == []


@pytest.mark.parametrize(("page", "size"), [(0, 1), (-1, 1), (1, 0), (1, -5)])
def test_paginate_rejects_out_of_range(page: int, size: int) -> None:
    with pytest.raises(ValueError):
        paginate(ITEMS, page, size)


@pytest.mark.parametrize(
    ("total", "size", "pages"), [(0, 1, 0), (1, 1, 1), (10, 3, 4), (9, 3, 3), (1, 100, 1)]
)
def test_page_count(total: int, size: int, pages: int) -> None:
    assert page_count(total, size) == pages


@given(st.lists(st.integers(), max_size=60), st.integers(1, 100))
def test_pages_concatenate_to_items(items: list[int], size: int) -> None:
    pages = [paginate(items, p, size) for p in range(1, page_count(len(items), size) + 2)]
    assert pages[-1] == []
    assert [x for page in pages for x in page] == items
    assert all(1 <= len(page) <= size for page in pages[:-1])
