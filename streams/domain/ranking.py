"""Exact first rows of one (program, basis, segment type) without counting every segment.

A segment's count at any threshold is at most its members (its live recommendations of that
type). A :class:`Ranking` keeps the families in the order of that bound, as the contract orders
rows: ``(-members, basis_id, action_type)``. Scanned in that order, a family's best possible
sort key is its bound's; once that is after the k-th best sort key found so far, so is every
later family's real one, and the scan stops: the first ``limit`` rows are exact, however many
families were never counted. The query's ``total`` (segments with a member at the threshold)
is the number of families whose greatest member weight is at least the threshold: a
:class:`ThresholdIndex` of those maxima answers it in O(log n).

The ranking is brought up to date at each query from the families its store marked as
changed since (``touch``), so ingest pays one set insertion per event of a ranked program.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from streams.domain.events import FamilyKey
from streams.domain.family import Family
from streams.domain.rows import SegmentRow
from streams.domain.threshold_index import ThresholdIndex

# (-members, basis_id, action_type, family key, greatest member weight): (basis_id,
# action_type) is unique in one ranking, so comparisons never reach the key. Keys, not
# families: a tuple of strings and numbers only, which the garbage collector stops tracking.
Entry = tuple[int, str, str, FamilyKey, float]

BLOCK = 512  # entries a block holds at most before it is split (an insert moves one block)


class _Ordered:
    """Entries in ascending order, in sorted blocks (sortedcontainers' layout): an insert or a
    removal costs a bisect and one block's memmove, not the whole list's."""

    __slots__ = ("blocks", "maxes")

    def __init__(self, entries: list[Any]) -> None:
        entries.sort()
        half = BLOCK // 2
        self.blocks = [entries[k:k + half] for k in range(0, len(entries), half)]
        self.maxes = [b[-1] for b in self.blocks]

    def add(self, entry: tuple[Any, ...]) -> None:
        maxes = self.maxes
        blocks = self.blocks
        if not maxes:
            blocks.append([entry])
            maxes.append(entry)
            return
        i = bisect_left(maxes, entry)
        if i == len(maxes):
            i -= 1
            block = blocks[i]
            block.append(entry)
            maxes[i] = entry
        else:
            block = blocks[i]
            insort(block, entry)
        if len(block) > BLOCK:
            right = block[BLOCK // 2:]
            del block[BLOCK // 2:]
            blocks.insert(i + 1, right)
            maxes[i] = block[-1]
            maxes.insert(i + 1, right[-1])

    def remove(self, entry: tuple[Any, ...]) -> None:
        maxes = self.maxes
        i = bisect_left(maxes, entry)
        block = self.blocks[i]
        j = bisect_left(block, entry)
        if block[j] is not entry:
            raise KeyError(entry[1:3])
        del block[j]
        if not block:
            del self.blocks[i]
            del maxes[i]
        elif j == len(block):
            maxes[i] = block[-1]

    def __iter__(self) -> Iterator[Any]:
        for block in self.blocks:
            yield from block

    def __len__(self) -> int:
        return sum(map(len, self.blocks))


class Ranking:
    """The families of one (program, basis) ranked for one segment type by their members: a
    bound of their count at any threshold (module docstring)."""

    __slots__ = ("dirty", "entries", "families", "maxima", "order", "segment_type")

    def __init__(self, segment_type: str, families: Mapping[FamilyKey, Family]) -> None:
        self.segment_type = segment_type
        self.families = families  # where the entries' families are (the store's, at sync)
        self.entries: dict[FamilyKey, Entry] = {}
        self.dirty: set[FamilyKey] = set()  # changed since the last sync (the store adds them)
        built: list[Entry] = []
        greatest: list[float] = []
        for key, fam in families.items():
            members, top = fam.members(segment_type)
            if members:
                entry = (-members, key[2], key[3], key, top)
                self.entries[key] = entry
                built.append(entry)
                greatest.append(top)
        self.order = _Ordered(built)
        self.maxima = ThresholdIndex.of(greatest)

    def __len__(self) -> int:
        return len(self.entries)

    def sync(self, families: Mapping[FamilyKey, Family]) -> None:
        """Bring the changed families' entries up to date (``families``: the store's)."""
        self.families = families
        dirty = self.dirty
        if not dirty:
            return
        entries = self.entries
        order = self.order
        maxima = self.maxima
        segment_type = self.segment_type
        for key in dirty:
            fam = families.get(key)
            members, top = (0, 0.0) if fam is None else fam.members(segment_type)
            old = entries.get(key)
            if old is not None:
                if old[0] == -members and old[4] == top:
                    continue
                order.remove(old)
                maxima.remove(old[4])
                del entries[key]
            if members and fam is not None:
                entry = (-members, key[2], key[3], key, top)
                entries[key] = entry
                order.add(entry)
                maxima.add(top)
        dirty.clear()

    def total(self, m: float) -> int:
        """Families with a member at ``m`` (call ``sync`` first)."""
        return self.maxima.count_at_least(m)

    def first(self, m: float, limit: int) -> list[SegmentRow]:
        """The first ``limit`` rows at ``m`` in the contract's order (call ``sync`` first).
        Exact: see the module docstring."""
        return first_of([self], m, limit)


def first_of(rankings: Sequence[Ranking], m: float, limit: int) -> list[SegmentRow]:
    """The first ``limit`` rows at ``m`` of rankings of one query (synced), in the contract's
    order: those of one worker's partitions, scanned together in the order of their bounds
    (a family is in one partition only), so counted as far as the worker's k-th best needs,
    not as far as each partition's does."""
    if not rankings or limit <= 0:
        return []
    segment_type = rankings[0].segment_type
    found: list[tuple[int, str, str, Family]] = []
    # The k-th best found so far, refreshed each time ``found`` doubles: a stale one is only
    # later in the order than the true one, so the scan stops later, never wrongly.
    kth: tuple[int, str, str] | None = None
    cap = 2 * limit + 64
    entries: Iterable[Entry] = (rankings[0].order if len(rankings) == 1
                                else heapq.merge(*(r.order for r in rankings)))
    stores = [r.families for r in rankings]
    for entry in entries:
        if kth is not None and entry > kth:  # (equal first three: the same family)
            break
        key = entry[3]
        for families in stores:  # (its family is in one of them: a few lookups at most)
            fam = families.get(key)
            if fam is not None:
                break
        else:
            raise KeyError(key)  # (an entry of a family its store no longer holds: a bug)
        count = fam.count_at_least(segment_type, m)
        if count:
            found.append((-count, entry[1], entry[2], fam))
            if len(found) >= cap:
                found.sort()  # ((basis_id, action_type) unique: never compares families)
                del found[limit:]
                kth = found[-1][:3]
    found.sort()
    return [_row(segment_type, fam, m) for _, _, _, fam in found[:limit]]


# (-count, basis_id, action_type, row): a threshold view's entry.
ViewEntry = tuple[int, str, str, SegmentRow]


class ThresholdView:
    """The listed segments of one (program, basis, segment type) at one threshold, as rows in
    the contract's order, kept up to date like a ``Ranking``: a query of that threshold
    counts nothing, it reads the first rows.

    Built in steps (``build``): its families are counted a budget at a time, each step
    reading their current state, and the changes since it was made are in ``dirty``; so once
    every family is counted (and ``sync`` ran), it is exact, whatever changed meanwhile."""

    __slots__ = ("dirty", "entries", "order", "pending", "segment_type", "threshold")

    def __init__(self, segment_type: str, threshold: float,
                 families: Mapping[FamilyKey, Family]) -> None:
        self.segment_type = segment_type
        self.threshold = threshold
        self.entries: dict[FamilyKey, ViewEntry] = {}
        self.dirty: set[FamilyKey] = set()
        # Families still to count (None: built; then ``order`` holds every entry).
        self.pending: list[FamilyKey] | None = list(families)
        self.order = _Ordered([])

    def __len__(self) -> int:
        return len(self.entries)

    def build(self, families: Mapping[FamilyKey, Family], budget: int) -> bool:
        """Count up to ``budget`` more families; True once all are (the view is usable)."""
        pending = self.pending
        if pending is None:
            return True
        step = pending[-budget:]
        del pending[-budget:]
        for key in step:
            self._set(key, families.get(key), False)
        if pending:
            return False
        self.pending = None
        self.order = _Ordered(list(self.entries.values()))  # (one sort, not an insert each)
        return True

    def sync(self, families: Mapping[FamilyKey, Family]) -> None:
        dirty = self.dirty
        if not dirty:
            return
        ordered = self.pending is None
        for key in dirty:
            self._set(key, families.get(key), ordered)
        dirty.clear()

    def _set(self, key: FamilyKey, fam: Family | None, ordered: bool) -> None:
        """The family's entry from its current state (none: not listed)."""
        old = self.entries.pop(key, None)
        if old is not None and ordered:
            self.order.remove(old)
        if fam is not None:
            row = _row(self.segment_type, fam, self.threshold)
            if row.user_count:
                entry = (-row.user_count, key[2], key[3], row)
                self.entries[key] = entry
                if ordered:
                    self.order.add(entry)

    def total(self) -> int:
        return len(self.entries)

    def first(self, limit: int) -> list[SegmentRow]:
        out: list[SegmentRow] = []
        for block in self.order.blocks:
            if len(out) >= limit:
                break
            out.extend(entry[3] for entry in block)
        del out[limit:]
        return out


def _row(segment_type: str, fam: Family, m: float) -> SegmentRow:
    """The family's row at ``m`` (``user_count`` 0: not listed)."""
    count, mean = fam.stats_at_least(segment_type, m)
    _, basis, basis_id, action = fam.key
    return SegmentRow(segment_type, basis, basis_id, action, fam.name, count, mean)
