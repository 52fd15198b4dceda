"""Paging of segment lists, safe for any page number."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.pagination import page_count, paginate

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
