"""The change ledger of one partition: which count of each segment at each watched threshold was
last published, and what to publish next (contract section 4).

Publication is write-ahead, in three steps the runtime performs with what ``take`` returns:
1. record each change as about to be published (an *intent*: count and previous count) together
   with the changes published at the partition's previous turn (*confirmations*: count alone),
   and wait for the broker;
2. publish the change events, and wait for the broker;
3. ``published``: the changes are now the last emitted counts, to be confirmed at the next turn
   (or by ``take_confirmations`` at a revocation or a stop).

Versions (contract §4): a change's ``version`` is the changelog offset of its intent. Offsets of
one partition only grow, whoever writes, so versions of a segment grow across restarts,
rebalances and workers. While a worker owns a partition it is the changelog partition's only
writer, so it knows the offset its next record gets (``next_offset``, from the rebuild and its
own acknowledgements); ``recorded`` checks the offsets the broker gave. Another offset means
someone else wrote meanwhile (a new owner, while this one was paused past its session): the
changes are not published, so no version an old owner publishes exceeds the new owner's.
Each record also names the offset its writer expected it at: an old owner's records that land
after the new owner's (queued before its pause, sent after it) are not the last published counts
of their segments (``load_unsure``), as a rebuild would otherwise take them for.
A worker that dies between 1 and 3 leaves an intent as the last record of its segment: the next
owner, rebuilding from those records, publishes that change again (the same one if the count has
not moved since), so the last change of a segment always reaches the topic. An intent names the
previous count, so it also stands for that count's confirmation: a segment that changes at every
tick needs no confirmation record of its own.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

from streams.domain.events import SEGMENT_TYPES, FamilyKey, SegmentBasis, SegmentType
from streams.domain.family import SegmentKey
from streams.domain.store import SETTLE_BUDGET, FamilyStore


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is slower (thousands a tick)
class CountChange:
    """A segment's count at a watched threshold moved from ``previous_user_count``."""

    key: SegmentKey
    name: str
    user_count: int
    previous_user_count: int
    strength: float
    version: int = -1  # the changelog offset of its intent, once recorded

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
    as_of: int = 0  # the greatest event ts applied on the partition when it was taken

    def records(self) -> dict[SegmentKey, tuple[int, int | None]]:
        """Step 1's records: per segment key, (count, previous count) for an intent and
        (count, None) for a confirmation that no intent of the same key supersedes."""
        out: dict[SegmentKey, tuple[int, int | None]] = {
            key: (count, None) for key, count in self.confirmations.items()}
        for c in self.changes:
            out[c.key] = (c.user_count, c.previous_user_count)
        return out


# Distinct count tuples the ledger shares at most (most families of a partition have published
# the same few small counts).
SHARED_COUNTS_MAX = 4096


class ChangeLedger:
    """The published counts of one partition's segments at the watched thresholds."""

    def __init__(self, partition: int, thresholds: tuple[float, ...]) -> None:
        self.partition = partition
        self.thresholds = thresholds
        # The watched segments of a family (type, threshold), per segment type and then per
        # threshold, and the position of each.
        self._watched = tuple((t, m) for t in SEGMENT_TYPES for m in thresholds)
        self._position = {w: i for i, w in enumerate(self._watched)}
        # Family -> the last published count of each watched segment, in ``_watched``'s order
        # (0 when none was published); equal tuples are shared (``_shared``).
        self.emitted: dict[FamilyKey, tuple[int, ...]] = {}
        self._none_published = (0,) * len(self._watched)
        self._shared: dict[tuple[int, ...], tuple[int, ...]] = {}
        # Key -> previous count of a change recorded as about to be published whose publication
        # was never confirmed (its worker died in between): published again once.
        self.uncertain: dict[SegmentKey, int] = {}
        self.late_records = 0  # records loaded with ``load_unsure`` (told once, at the install)
        # Key -> count of changes published but not yet recorded as published.
        self.unconfirmed: dict[SegmentKey, int] = {}
        # The offset the partition's next emitted-counts record gets, while this worker is its
        # only writer; None: not known (a write failed), so nothing may be published.
        self.next_offset: int | None = None

    def recorded(self, publication: Publication, offsets: list[int]) -> bool:
        """Step 1 was acknowledged at ``offsets`` (of ``publication.records()``, in order):
        True when they follow this worker's own last record with no other writer in between;
        then each change's ``version`` is its intent's offset. False (nothing may be published
        from this state any more) otherwise."""
        expected = self.next_offset
        if expected is None or offsets != list(range(expected, expected + len(offsets))):
            self.next_offset = None
            return False
        self.next_offset = expected + len(offsets)
        if publication.changes:
            position = {key: i for i, key in enumerate(publication.records())}
            for c in publication.changes:
                c.version = offsets[position[c.key]]
        return True

    def emitted_count(self, key: SegmentKey) -> int:
        """The last published count of a segment at a watched threshold (0 if none)."""
        counts = self.emitted.get(key[0])
        position = self._position.get((key[1], key[2]))
        return 0 if counts is None or position is None else counts[position]

    def _emit(self, key: SegmentKey, count: int) -> None:
        position = self._position.get((key[1], key[2]))
        if position is None:  # a threshold no longer watched: never compared again
            return
        family = key[0]
        counts = list(self.emitted.get(family, self._none_published))
        counts[position] = count
        made = tuple(counts)
        if made == self._none_published:  # the default: nothing kept for a family at 0
            self.emitted.pop(family, None)
            return
        shared = self._shared.get(made)
        if shared is None:
            shared = made
            if len(self._shared) < SHARED_COUNTS_MAX:
                self._shared[made] = made
        self.emitted[family] = shared

    def load(self, key: SegmentKey, count: int, previous: int | None = None) -> None:
        """Rebuild path: the last record of one segment and threshold. With ``previous``, it is
        an intent (``previous -> count``): the change may or may not have reached the topic."""
        self._emit(key, count)
        if previous is None:
            self.uncertain.pop(key, None)
        else:
            self.uncertain[key] = previous

    def load_unsure(self, key: SegmentKey) -> None:
        """Rebuild path: a record of the segment that its writer did not expect where it landed
        (an old owner's late write). It is not the last published count: that write was never
        followed by a publication, and what it confirms was published before the records it
        landed after. Whatever the records before it say, the segment is published again
        (compaction may have removed them, leaving only this record)."""
        self.late_records += 1
        self.uncertain.setdefault(key, self.emitted_count(key))

    def settle(self, store: FamilyStore) -> None:
        """After a rebuild: the families whose counts differ from the last published ones, or
        whose last publication is uncertain, are dirty; unchanged ones are not."""
        for _ in self.settle_steps(store, sys.maxsize):
            pass

    def settle_steps(self, store: FamilyStore, budget: int = SETTLE_BUDGET) -> Iterator[None]:
        """``settle`` in steps of about ``budget`` slots and families (the caller gives the
        event loop a turn at each). A family changed between steps is dirty anyway."""
        emitted = self.emitted
        uncertain = self.uncertain
        work = 0
        for key, fam in list(store.families.items()):
            work += 1 if fam.indexes is not None else 1 + len(fam.slots)
            if work >= budget:
                work = 0
                yield
            if store.families.get(key) is not fam:
                continue  # dropped meanwhile (the loop below sees it gone)
            counts = emitted.pop(key, None)
            if counts is None:
                counts = self._none_published
            else:
                emitted[key] = counts  # keyed by the store's key object from now on (shared)
            for (segment_type, m), published in zip(self._watched, counts, strict=True):
                if fam.count_at_least(segment_type, m) != published or (
                        uncertain and (key, segment_type, m) in uncertain):
                    store.dirty.add(key)
                    break
        # Families gone from the store (aged out, or never rebuilt: a compacted changelog)
        # whose last published counts are not 0: their segments are published at 0.
        families = store.families
        for i, key in enumerate(list(emitted)):
            if key not in families:
                store.dirty.add(key)
            if i % budget == budget - 1:
                yield
        for sk in uncertain:
            if sk[0] not in families:
                store.dirty.add(sk[0])

    def take(self, store: FamilyStore, limit: int | None = None) -> Publication | None:
        """Step 1: the counts that differ from the last published ones (dirty families only),
        uncertain publications again (the same change when the count is still the one it
        announced), and the confirmations due; None when there is nothing to write.
        ``limit``: of at most that many dirty families that moved (the others stay dirty)."""
        changes: list[CountChange] = []
        uncertain = self.uncertain
        emitted = self.emitted
        families = store.families
        watched = self._watched
        # Families taken until one of them moved (or none is left dirty): a publication is
        # None only when nothing is to be written.
        while True:
            for key in store.take_dirty(limit):
                fam = families.get(key)
                if fam is None:
                    self._take_gone(key, changes)
                    continue
                for (segment_type, m), previous in zip(
                        watched, emitted.get(key, self._none_published), strict=True):
                    count = fam.count_at_least(segment_type, m)
                    sk: SegmentKey | None = None
                    if count == previous:
                        if not uncertain:
                            continue
                        sk = (key, segment_type, m)
                        if sk not in uncertain:
                            continue
                        previous = uncertain[sk]
                    count, mean = fam.stats_at_least(segment_type, m)
                    changes.append(CountChange(sk or (key, segment_type, m), fam.name, count,
                                               previous, mean))
            if changes or limit is None or not store.dirty:
                break
        confirmations = self.take_confirmations()
        if not changes and not confirmations:
            return None
        return Publication(self.partition, changes, confirmations, store.max_ts or 0)

    def _take_gone(self, key: FamilyKey, changes: list[CountChange]) -> None:
        """A family the store no longer holds (aged out): each of its segments last published
        above 0, or whose publication is uncertain, is published at 0."""
        for (segment_type, m), previous in zip(
                self._watched, self.emitted.get(key, self._none_published), strict=True):
            sk = (key, segment_type, m)
            if not previous:
                if sk not in self.uncertain:
                    continue
                previous = self.uncertain[sk]
            # The name is gone with the family; the contract's default name is the basis id.
            changes.append(CountChange(sk, key[2], 0, previous, 0.0))

    def take_confirmations(self) -> dict[SegmentKey, int]:
        """Published changes not yet recorded as published (for a revocation or a stop)."""
        taken, self.unconfirmed = self.unconfirmed, {}
        return taken

    def published(self, publication: Publication) -> None:
        """Step 3: the changes reached the topic; they are the last published counts now."""
        for c in publication.changes:
            self._emit(c.key, c.user_count)
            self.uncertain.pop(c.key, None)
            self.unconfirmed[c.key] = c.user_count

    def failed(self, publication: Publication, store: FamilyStore, recorded: bool) -> None:
        """Step 1 (``recorded`` False) or step 2 failed: the changes are taken again at the next
        tick, and unrecorded confirmations are given back."""
        if not recorded:
            for key, count in publication.confirmations.items():
                self.unconfirmed.setdefault(key, count)
        store.dirty.update(c.family for c in publication.changes)
