"""Everything one partition holds: its segment families and their change ledger."""

from __future__ import annotations

from collections.abc import Iterator

from streams.domain.events import Event, FamilyKey
from streams.domain.ledger import ChangeLedger, Publication
from streams.domain.ranking import Ranking
from streams.domain.rows import SegmentRow
from streams.domain.store import DEFAULT_GRACE_MS, SETTLE_BUDGET, FamilyStore


class PartitionState:
    """The families of one partition of the repartition topic (and of the changelogs, which
    share its number) and the ledger of their published counts."""

    def __init__(self, number: int, thresholds: tuple[float, ...],
                 rebuilding: bool = False, grace_ms: int = DEFAULT_GRACE_MS) -> None:
        self.number = number
        self.store = FamilyStore(rebuilding, grace_ms)
        self.ledger = ChangeLedger(number, thresholds)
        self.settled = False  # settle_steps ran to its end: the next settle() has nothing to do

    def apply(self, ev: Event, offset: int, family: FamilyKey | None = None) -> bool | None:
        return self.store.apply(ev, offset, family)

    def query(self, program_id: str, segment_type: str, segment_basis: str,
              min_weight: float) -> list[SegmentRow]:
        return self.store.query(program_id, segment_type, segment_basis, min_weight)

    def top(self, program_id: str, segment_type: str, segment_basis: str, min_weight: float,
            limit: int | None) -> tuple[list[SegmentRow], int]:
        return self.store.top(program_id, segment_type, segment_basis, min_weight, limit)

    def top_or_ranking(self, program_id: str, segment_type: str, segment_basis: str,
                       min_weight: float, limit: int) -> tuple[list[SegmentRow], int] | Ranking:
        return self.store.top_or_ranking(program_id, segment_type, segment_basis, min_weight,
                                         limit)

    def settle(self) -> None:
        """End of a rebuild: the indexes built, the segments whose counts moved since their
        last publication marked for the next one. Nothing to do right after ``settle_steps``
        ran to its end (the caller installs the state with no change in between)."""
        if self.settled:
            self.settled = False
            return
        self.store.finish_rebuild()
        self.ledger.settle(self.store)

    def settle_steps(self, budget: int = SETTLE_BUDGET) -> Iterator[None]:
        """``settle`` in steps (the caller gives the event loop a turn at each); once it ran
        to its end, the next ``settle`` is a no-op."""
        yield from self.store.finish_rebuild_steps(budget)
        yield from self.ledger.settle_steps(self.store, budget)
        self.settled = True

    def take_publication(self, limit: int | None = None) -> Publication | None:
        """The ledger's next publication, of at most ``limit`` dirty families."""
        self.store.finish_rebuild()  # (a no-op unless rebuilding)
        return self.ledger.take(self.store, limit)

    def recommendations(self) -> int:
        return self.store.recommendations()
