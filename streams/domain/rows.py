"""The rows `GET /segments` lists and the contract's one order of them."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

import msgspec


class SegmentRow(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One listed segment at one threshold. Built by the thousand per query, hence a compiled
    struct (a NamedTuple is several times slower to build); it travels between workers as a
    JSON array."""

    segment_type: str
    segment_basis: str
    segment_basis_id: str
    action_type: str
    name: str
    user_count: int
    strength: float


def sort_key(row: SegmentRow) -> tuple[int, str, str, str]:
    """The contract's order: user_count descending, then segment_basis_id and action_type
    ascending (and name: one query's rows share their type and basis, so a total order)."""
    return (-row.user_count, row.segment_basis_id, row.action_type, row.name)


def contract_order(rows: list[SegmentRow]) -> list[SegmentRow]:
    """Sort ``rows`` in place in the contract's order; returns them."""
    rows.sort(key=sort_key)
    return rows


SELECT_BELOW = 10  # a partial selection beats a sort while limit < rows / this (measured)


def top(rows: Sequence[SegmentRow], limit: int | None) -> list[SegmentRow]:
    """The first ``limit`` of ``rows`` (all: None) in the contract's order, a new list: a
    partial selection (O(n log limit), heapq.nsmallest) when ``limit`` is a small part of
    them, else a sort (nsmallest's heap in Python costs more per row than a sort in C)."""
    if limit is not None and limit * SELECT_BELOW < len(rows):
        return heapq.nsmallest(limit, rows, key=sort_key)
    ordered = sorted(rows, key=sort_key)
    return ordered if limit is None or limit >= len(ordered) else ordered[:limit]


def merge_top(parts: Iterable[Iterable[SegmentRow]], limit: int | None) -> list[SegmentRow]:
    """The first ``limit`` rows (all: None) of parts each already in the contract's order: a
    k-way merge, exact because a segment lives wholly on one partition (no row in two parts)."""
    return list(islice(heapq.merge(*parts, key=sort_key), limit))


@dataclass(frozen=True, slots=True)
class Held:
    """What a worker holds of some partitions for a query: rows (its first rows in contract
    order, as many as asked for), how many it lists in all (``total``; -1 when built: the
    rows are all of them), the partitions covered, their lag, and whether any part is not
    from a serving owner."""

    rows: list[SegmentRow]
    partitions: list[int]
    lag: int
    stale: bool
    total: int = -1

    def __post_init__(self) -> None:
        if self.total < 0:
            object.__setattr__(self, "total", len(self.rows))
