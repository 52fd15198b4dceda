"""Pages of a list, safe for any page number."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def page_count(total: int, size: int) -> int:
    """Number of pages of `size` items holding `total` items."""
    if size < 1:
        raise ValueError("size must be >= 1")
    return -(-total // size)


def paginate(items: Sequence[T], page: int, size: int) -> list[T]:
    """Items of 1-based `page`; `[]` past the end, however large `page` is."""
    if page < 1:
        raise ValueError("page must be >= 1")
    if page > page_count(len(items), size):  # compares only: no big-int offsets
        return []
    start = (page - 1) * size  # small here: page <= len(items)
    return list(items[start : start + size])
