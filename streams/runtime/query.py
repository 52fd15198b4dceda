"""The query service: what the HTTP API asks of a worker (api/backend.py's ``SegmentsBackend``).

Each partition memoises its part of an answer until an event changes that program and basis;
the merged, sorted list of this worker's partitions is memoised while every part is the same
memoised list.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from streams.domain.rows import SegmentRow, contract_order
from streams.runtime.partitions import PartitionRegistry

MERGED_MEMO_MAX = 16  # merged answers kept (each holds its partitions' memoised parts)

_Key = tuple[str, str, str, float]


@dataclass(frozen=True)
class Cluster:
    """Where this worker is and how the work is split."""

    self_url: str  # exactly the URL it advertises to the group
    total_partitions: int
    cache_ttl_s: float


class QueryService:
    def __init__(self, registry: PartitionRegistry, cluster: Cluster,
                 owners: Callable[[], dict[str, list[int]]],
                 rebalancing: Callable[[], bool] = lambda: False,
                 lag: Callable[[], int] = lambda: 0) -> None:
        self.registry = registry
        self.cluster = cluster
        self._owners = owners
        self._rebalancing = rebalancing
        self._lag = lag
        self._merged: OrderedDict[_Key, tuple[list[list[SegmentRow]], list[SegmentRow]]] = (
            OrderedDict())

    @property
    def self_url(self) -> str:
        return self.cluster.self_url

    @property
    def total_partitions(self) -> int:
        return self.cluster.total_partitions

    @property
    def cache_ttl_s(self) -> float:
        return self.cluster.cache_ttl_s

    def is_ready(self) -> bool:
        return self.registry.serving and not self._rebalancing()

    def local_query(self, program_id: str, segment_type: str, segment_basis: str,
                    min_weight: float) -> tuple[list[SegmentRow], list[int]]:
        """Segments of one program on this worker's active partitions, in contract order (a
        shared list: not to be modified), and those partitions."""
        active = self.registry.active
        covered = sorted(active)
        parts = [active[p].query(program_id, segment_type, segment_basis, min_weight)
                 for p in covered]
        key = (program_id, segment_type, segment_basis, min_weight)
        hit = self._merged.get(key)
        if (hit is not None and len(hit[0]) == len(parts)
                and all(a is b for a, b in zip(hit[0], parts, strict=True))):
            self._merged.move_to_end(key)
            return hit[1], covered
        rows = contract_order([row for part in parts for row in part])
        self._merged[key] = (parts, rows)
        while len(self._merged) > MERGED_MEMO_MAX:
            self._merged.popitem(last=False)
        return rows, covered

    def partitions(self) -> list[int]:
        return sorted(self.registry.active)

    def owners(self) -> dict[str, list[int]]:
        """Worker URL -> active partitions, from the group assignment."""
        return self._owners()

    def recommendations(self) -> int:
        return self.registry.recommendations()

    def lag(self) -> int:
        return self._lag()
