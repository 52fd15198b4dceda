"""Order and page segment lists; safe for any page number."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

T = TypeVar("T")


class SegmentLike(Protocol):
    """What `sort_key` reads (a `SegmentCount` or anything with the same attributes)."""

    @property
    def user_count(self) -> int: ...
    @property
    def segment_basis_id(self) -> str: ...
    @property
    def action_type(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def segment_type(self) -> str: ...
    @property
    def segment_basis(self) -> str: ...


def sort_key(item: SegmentLike) -> tuple[int, str, str, str, str, str]:
    """`user_count` descending, then `segment_basis_id`, `action_type` ascending (total order)."""
    return (
        -item.user_count,
        item.segment_basis_id,
        item.action_type,
        item.name,
        item.segment_type,
        item.segment_basis,
    )


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
