"""What the HTTP API needs from a worker (streams/runtime/query.py provides it)."""

from __future__ import annotations

from typing import Protocol

from streams.domain.rows import Held, SegmentRow


class SegmentsBackend(Protocol):
    @property
    def self_url(self) -> str:
        """The URL this worker advertises to the others."""
    @property
    def total_partitions(self) -> int: ...
    @property
    def cache_ttl_s(self) -> float: ...
    def is_ready(self) -> bool:
        """Partitions assigned and rebuilt, no rebalance under way."""
    def readiness(self) -> str | None:
        """None once this worker can answer GET /segments with consistency=any; else why
        not. O(1)."""
    def local_query(self, program_id: str, segment_type: str, segment_basis: str,
                    min_weight: float) -> tuple[list[SegmentRow], list[int]]:
        """Listed segments on this worker's partitions, in contract order (a list the caller
        must not modify), and those partitions."""
    def local_top(self, program_id: str, segment_type: str, segment_basis: str,
                  min_weight: float, limit: int | None = None
                  ) -> tuple[list[SegmentRow], int, list[int]]:
        """The first ``limit`` (None: all) listed segments on this worker's partitions, in
        contract order (a list the caller must not modify), how many there are in all, and
        those partitions."""
    def partitions(self) -> list[int]:
        """The partitions this worker serves."""
    def owners(self) -> dict[str, list[int]]:
        """Worker URL -> the partitions it serves, from the group assignment."""
    def recommendations(self) -> int:
        """Recommendations held on this worker's partitions: O(partitions), never a walk."""
    def lag(self, partitions: list[int] | None = None) -> int:
        """Records of this worker's partitions (of ``partitions``) not yet handled, as of their
        last fetch."""
    async def held_query(self, program_id: str, segment_type: str, segment_basis: str,
                         min_weight: float, partitions: list[int],
                         limit: int | None = None) -> Held:
        """Whatever this worker holds of ``partitions`` (its own, standby copies): its first
        ``limit`` rows (None: all) in contract order and its total, flagged stale when any
        part is not from it serving as their owner."""
    async def input_ends(self, fresh: bool = False) -> int | None:
        """The input and repartition topics' end offsets summed (None: unknown), as read lately
        or, ``fresh``, now: how many records came after an answer, later on."""
    def rebuilding(self) -> list[int]:
        """The partitions assigned to this worker still being rebuilt in the background (not
        served by it yet)."""
    def standbys(self) -> list[int]:
        """The partitions whose standby copy this worker keeps ready."""
    def standby_holders(self) -> dict[int, list[str]]:
        """Partition -> the workers keeping a standby copy of it."""
