"""The rows `GET /segments` lists and the contract's one order of them."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Held:
    """What a worker holds of some partitions for a query: rows (sorted only within each
    partition), the partitions covered, their lag, and whether any part is not from a serving
    owner."""

    rows: list[SegmentRow]
    partitions: list[int]
    lag: int
    stale: bool
