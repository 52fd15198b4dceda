"""The query service: what the HTTP API asks of a worker (api/backend.py's ``SegmentsBackend``).

Each partition memoises its part of an answer until an event changes that program and basis;
the merged first rows of this worker's partitions (as many as asked for, selected per
partition and k-way merged, never a sort of every row) are memoised while every part is the
same memoised list.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from streams.domain.ranking import Ranking, first_of
from streams.domain.rows import Held, SegmentRow, merge_top, top
from streams.runtime.group_lag import GroupLag
from streams.runtime.partitions import PartitionRegistry
from streams.runtime.standby import StandbyReplicas, holders

MERGED_MEMO_MAX = 16  # merged answers kept (each holds its partitions' memoised parts)

_Key = tuple[str, str, str, float]


@dataclass(frozen=True)
class Cluster:
    """Where this worker is and how the work is split."""

    self_url: str  # exactly the URL it advertises to the group
    total_partitions: int
    cache_ttl_s: float
    standby_replicas: int = 0


class QueryService:
    def __init__(self, registry: PartitionRegistry, cluster: Cluster,
                 owners: Callable[[], dict[str, list[int]]],
                 rebalancing: Callable[[], bool] = lambda: False,
                 lag: Callable[[], dict[tuple[str, int], int]] = dict,
                 standbys: StandbyReplicas | None = None,
                 group_lag: GroupLag | None = None) -> None:
        self.registry = registry
        self.cluster = cluster
        self._owners = owners
        self._rebalancing = rebalancing
        self._lag = lag
        self._standbys = standbys
        self._group_lag = group_lag
        self._warmed = False  # ready once with every standby copy warm
        # query -> (the parts it was merged from, its first rows, how many rows in all)
        self._merged: OrderedDict[
            _Key, tuple[list[list[SegmentRow]], list[SegmentRow], int]] = OrderedDict()

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

    def readiness(self) -> str | None:
        """The registry's readiness; at the first assignment, its standby copies warm too: a
        rolling restart paced by readiness then never stops a worker whose partitions' only
        copy is still being read on the worker restarted before it."""
        reason = self.registry.readiness()
        if reason is not None or self._warmed:
            return reason
        warming = [] if self._standbys is None else self._standbys.warming()
        if warming:
            return f"reading the standby copies of partitions {warming} of its first assignment"
        self._warmed = True  # from now on, as the registry says (it stays ready)
        return None

    def local_query(self, program_id: str, segment_type: str, segment_basis: str,
                    min_weight: float) -> tuple[list[SegmentRow], list[int]]:
        """Segments of one program on this worker's active partitions, in contract order (a
        shared list: not to be modified), and those partitions."""
        rows, _, covered = self.local_top(program_id, segment_type, segment_basis, min_weight)
        return rows, covered

    def local_top(self, program_id: str, segment_type: str, segment_basis: str,
                  min_weight: float, limit: int | None = None
                  ) -> tuple[list[SegmentRow], int, list[int]]:
        """The first ``limit`` segments (None: all) of one program on this worker's active
        partitions in contract order (a shared list: not to be modified), how many it lists
        in all, and those partitions."""
        active = self.registry.active
        covered = sorted(active)
        parts, total = parts_of([active[p] for p in covered], program_id, segment_type,
                              segment_basis, min_weight, limit)
        key = (program_id, segment_type, segment_basis, min_weight)
        hit = self._merged.get(key)
        if (hit is not None and len(hit[0]) == len(parts)
                and all(a is b for a, b in zip(hit[0], parts, strict=True))
                and (len(hit[1]) == hit[2] or (limit is not None and limit <= len(hit[1])))):
            self._merged.move_to_end(key)
            rows = hit[1]
            return (rows if limit is None or limit >= len(rows) else rows[:limit]), hit[2], covered
        if limit is None:
            rows = merge_top([top(part, limit) for part in parts], limit)
        else:
            rows = merge_top(parts, limit)
        self._merged[key] = (parts, rows, total)
        while len(self._merged) > MERGED_MEMO_MAX:
            self._merged.popitem(last=False)
        return rows, total, covered

    def partitions(self) -> list[int]:
        return sorted(self.registry.active)

    def owners(self) -> dict[str, list[int]]:
        """Worker URL -> active partitions, from the group assignment."""
        return self._owners()

    def recommendations(self) -> int:
        return self.registry.recommendations()

    def lag(self, partitions: list[int] | None = None) -> int:
        """Records of this worker's partitions (of ``partitions``) not handled yet."""
        lags = self._lag()
        if partitions is None:
            return sum(lags.values())
        wanted = set(partitions)
        return sum(v for (_, p), v in lags.items() if p in wanted)

    async def held_query(self, program_id: str, segment_type: str, segment_basis: str,
                         min_weight: float, partitions: list[int],
                         limit: int | None = None) -> Held:
        """The first ``limit`` rows (None: all), in contract order, of whatever this worker
        holds of ``partitions``: its own partitions, its ready standby copies, copies taken
        over and being brought up to date. Parts not from this worker serving as their owner
        make the answer stale, with the group's lag as the broker has it now."""
        wanted = set(partitions)
        if not (self.is_ready() and wanted <= set(self.registry.active)):
            await self._refresh_group_lag()  # (the states may move meanwhile: looked up after)
        serving = self.is_ready()
        active = self.registry.active
        recovering = self.registry.recovering
        owned = sorted(p for p in wanted if p in active)
        stale = not serving and bool(owned)
        taken = sorted(p for p in wanted - set(owned)
                       if p in recovering and not recovering[p].store.rebuilding)
        states = [active[p] for p in owned] + [recovering[p] for p in taken]
        lag = self.lag(owned) if serving else self._held_lag(owned)
        lag += self._held_lag(taken)
        covered = owned + taken
        if self._standbys is not None:
            copies, more_lag = self._standbys.held(wanted - set(covered))
            states += [state for _, state in copies]
            covered += [p for p, _ in copies]
            lag += more_lag
            stale = stale or bool(copies)
        parts, total = parts_of(states, program_id, segment_type, segment_basis, min_weight,
                              limit)
        rows = merge_top([top(part, None) for part in parts] if limit is None else parts,
                         limit)
        return Held(rows, sorted(covered), lag, stale or bool(taken), total)

    def _held_lag(self, partitions: list[int]) -> int:
        return sum(self._group_lag.of(p) for p in partitions) if self._group_lag else 0

    async def _refresh_group_lag(self) -> None:
        if self._group_lag is not None:
            await self._group_lag.refresh()

    async def input_ends(self, fresh: bool = False) -> int | None:
        """The input and repartition topics' end offsets summed, as of the last reading of
        the group's lag (at most a second or so old) or, ``fresh``, a reading started now;
        None when unknown."""
        if self._group_lag is None:
            return None
        if fresh:
            await self._group_lag.refresh()
        return self._group_lag.ends if self._group_lag.ends >= 0 else None

    def rebuilding(self) -> list[int]:
        return sorted(self.registry.rebuilding)

    def standbys(self) -> list[int]:
        return [] if self._standbys is None else self._standbys.ready()

    def standby_holders(self) -> dict[int, list[str]]:
        """Partition -> the workers keeping its standby copies, in the current assignment."""
        if not self.cluster.standby_replicas:
            return {}
        return holders(self._owners(), self.cluster.standby_replicas)


class Ranked(Protocol):
    """What ``parts_of`` asks of a partition's state (PartitionState, FamilyStore)."""

    def query(self, program_id: str, segment_type: str, segment_basis: str,
              min_weight: float) -> list[SegmentRow]: ...

    def top_or_ranking(self, program_id: str, segment_type: str, segment_basis: str,
                       min_weight: float, limit: int) -> tuple[list[SegmentRow], int] | Ranking:
        ...


def parts_of(states: Sequence[Ranked], program_id: str, segment_type: str,
           segment_basis: str, min_weight: float, limit: int | None
           ) -> tuple[list[list[SegmentRow]], int]:
    """The rows of ``states`` at ``min_weight`` as parts (all of them; with a ``limit``, each
    part in the contract's order and only as many as the first ``limit`` rows of all need,
    counted as far as the rankings need, domain/ranking.py) and how many they list in all."""
    if limit is None:
        parts = [s.query(program_id, segment_type, segment_basis, min_weight) for s in states]
        return parts, sum(map(len, parts))
    parts, total, rankings = [], 0, []
    for state in states:
        got = state.top_or_ranking(program_id, segment_type, segment_basis, min_weight, limit)
        if isinstance(got, Ranking):
            rankings.append(got)
            total += got.total(min_weight)
        else:
            parts.append(got[0])
            total += got[1]
    if rankings:  # scanned together: as far as these states' first rows need
        parts.append(first_of(rankings, min_weight, limit))
    return parts, total
