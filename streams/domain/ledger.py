"""The change ledger of one partition: which count of each segment at each watched threshold was
last published, and what to publish next (contract section 4).

Publication is write-ahead, in three steps the runtime performs with what ``take`` returns:
1. record each change as about to be published (an *intent*: count and previous count) together
   with the changes published at the previous tick (*confirmations*: count alone), and wait for
   the broker;
2. publish the change events, and wait for the broker;
3. ``published``: the changes are now the last emitted counts, to be confirmed at the next tick
   (or by ``take_confirmations`` at a revocation or a stop).
A worker that dies between 1 and 3 leaves an intent as the last record of its segment: the next
owner, rebuilding from those records, publishes that change again (the same one if the count has
not moved since), so the last change of a segment always reaches the topic. An intent names the
previous count, so it also stands for that count's confirmation: a segment that changes at every
tick needs no confirmation record of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from streams.domain.events import SEGMENT_TYPES, FamilyKey, SegmentBasis, SegmentType
from streams.domain.family import SegmentKey
from streams.domain.store import FamilyStore


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is slower (thousands a tick)
class CountChange:
    """A segment's count at a watched threshold moved from ``previous_user_count``."""

    key: SegmentKey
    name: str
    user_count: int
    previous_user_count: int
    strength: float

    @property
    def family(self) -> FamilyKey:
        return self.key[0]

    @property
    def program_id(self) -> str:
        return self.key[0][0]

    @property
    def segment_basis(self) -> SegmentBasis:
        basis: SegmentBasis = self.key[0][1]  # type: ignore[assignment]
        return basis

    @property
    def segment_basis_id(self) -> str:
        return self.key[0][2]

    @property
    def action_type(self) -> str:
        return self.key[0][3]

    @property
    def segment_type(self) -> SegmentType:
        return self.key[1]

    @property
    def min_weight(self) -> float:
        return self.key[2]


@dataclass(slots=True)
class Publication:
    """What one partition publishes at one tick: ``changes`` (each recorded first as an intent)
    and ``confirmations`` (changes published before, recorded as published now)."""

    partition: int
    changes: list[CountChange]
    confirmations: dict[SegmentKey, int]

    def records(self) -> dict[SegmentKey, tuple[int, int | None]]:
        """Step 1's records: per segment key, (count, previous count) for an intent and
        (count, None) for a confirmation that no intent of the same key supersedes."""
        out: dict[SegmentKey, tuple[int, int | None]] = {
            key: (count, None) for key, count in self.confirmations.items()}
        for c in self.changes:
            out[c.key] = (c.user_count, c.previous_user_count)
        return out


class ChangeLedger:
    """The published counts of one partition's segments at the watched thresholds."""

    def __init__(self, partition: int, thresholds: tuple[float, ...]) -> None:
        self.partition = partition
        self.thresholds = thresholds
        self.emitted: dict[SegmentKey, int] = {}
        # Key -> previous count of a change recorded as about to be published whose publication
        # was never confirmed (its worker died in between): published again once.
        self.uncertain: dict[SegmentKey, int] = {}
        # Key -> count of changes published but not yet recorded as published.
        self.unconfirmed: dict[SegmentKey, int] = {}

    def load(self, key: SegmentKey, count: int, previous: int | None = None) -> None:
        """Rebuild path: the last record of one segment and threshold. With ``previous``, it is
        an intent (``previous -> count``): the change may or may not have reached the topic."""
        self.emitted[key] = count
        if previous is None:
            self.uncertain.pop(key, None)
        else:
            self.uncertain[key] = previous

    def settle(self, store: FamilyStore) -> None:
        """After a rebuild: the families whose counts differ from the last published ones, or
        whose last publication is uncertain, are dirty; unchanged ones are not."""
        for key, fam in store.families.items():
            for sk in self._segments(key):
                if sk in self.uncertain or fam.count_at_least(sk[1], sk[2]) != self.emitted.get(
                        sk, 0):
                    store.dirty.add(key)
                    break

    def take(self, store: FamilyStore) -> Publication | None:
        """Step 1: the counts that differ from the last published ones (dirty families only),
        uncertain publications again (the same change when the count is still the one it
        announced), and the confirmations due; None when there is nothing to write."""
        changes: list[CountChange] = []
        uncertain = self.uncertain
        emitted = self.emitted
        families = store.families
        for key in store.take_dirty():
            fam = families.get(key)
            if fam is None:
                continue
            for sk in self._segments(key):
                _, segment_type, m = sk
                count = fam.count_at_least(segment_type, m)
                previous = emitted.get(sk, 0)
                if count == previous:
                    if sk not in uncertain:
                        continue
                    previous = uncertain[sk]
                count, mean = fam.stats_at_least(segment_type, m)
                changes.append(CountChange(sk, fam.name, count, previous, mean))
        confirmations = self.take_confirmations()
        if not changes and not confirmations:
            return None
        return Publication(self.partition, changes, confirmations)

    def take_confirmations(self) -> dict[SegmentKey, int]:
        """Published changes not yet recorded as published (for a revocation or a stop)."""
        taken, self.unconfirmed = self.unconfirmed, {}
        return taken

    def published(self, publication: Publication) -> None:
        """Step 3: the changes reached the topic; they are the last published counts now."""
        for c in publication.changes:
            self.emitted[c.key] = c.user_count
            self.uncertain.pop(c.key, None)
            self.unconfirmed[c.key] = c.user_count

    def failed(self, publication: Publication, store: FamilyStore, recorded: bool) -> None:
        """Step 1 (``recorded`` False) or step 2 failed: the changes are taken again at the next
        tick, and unrecorded confirmations are given back."""
        if not recorded:
            for key, count in publication.confirmations.items():
                self.unconfirmed.setdefault(key, count)
        store.dirty.update(c.family for c in publication.changes)

    def _segments(self, key: FamilyKey) -> Iterator[SegmentKey]:
        """The keys of the family's watched segments, per segment type and then per threshold
        (made when asked: the published ones are kept in ``emitted``)."""
        for t in SEGMENT_TYPES:
            for m in self.thresholds:
                yield key, t, m
