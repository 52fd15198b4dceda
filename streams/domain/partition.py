"""Everything one partition holds: its segment families and their change ledger."""

from __future__ import annotations

from streams.domain.events import Event, FamilyKey
from streams.domain.ledger import ChangeLedger, Publication
from streams.domain.rows import SegmentRow
from streams.domain.store import DEFAULT_GRACE_MS, FamilyStore


class PartitionState:
    """The families of one partition of the repartition topic (and of the changelogs, which
    share its number) and the ledger of their published counts."""

    def __init__(self, number: int, thresholds: tuple[float, ...],
                 rebuilding: bool = False, grace_ms: int = DEFAULT_GRACE_MS) -> None:
        self.number = number
        self.store = FamilyStore(rebuilding, grace_ms)
        self.ledger = ChangeLedger(number, thresholds)

    def apply(self, ev: Event, offset: int, family: FamilyKey | None = None) -> bool | None:
        return self.store.apply(ev, offset, family)

    def query(self, program_id: str, segment_type: str, segment_basis: str,
              min_weight: float) -> list[SegmentRow]:
        return self.store.query(program_id, segment_type, segment_basis, min_weight)

    def settle(self) -> None:
        """End of a rebuild: the indexes built, the segments whose counts moved since their
        last publication marked for the next one."""
        self.store.finish_rebuild()
        self.ledger.settle(self.store)

    def take_publication(self) -> Publication | None:
        self.store.finish_rebuild()  # (a no-op unless rebuilding)
        return self.ledger.take(self.store)

    def recommendations(self) -> int:
        return self.store.recommendations()
