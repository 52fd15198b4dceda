"""The segment families of one partition: last-writer-wins recommendations and, derived from
them, the threshold indexes, served by program and basis through a bounded query memo."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from streams.domain.events import Event, FamilyKey
from streams.domain.family import Family, StoredRecommendation
from streams.domain.rows import SegmentRow

# Rows and answers the query memo holds at most (least recently used first).
MEMO_MAX_ROWS = 20_000
MEMO_MAX_ANSWERS = 1_000

_MemoKey = tuple[str, str, str, float]  # program, segment type, basis, threshold
# The answer for a program and basis not held here: one shared list, so that the merged
# answers memoised by identity (runtime/query.py) hold for it too. Not to be modified.
_NOTHING: list[SegmentRow] = []


class FamilyStore:
    """Every segment family of one partition."""

    def __init__(self, rebuilding: bool = False) -> None:
        # While rebuilding (a new owner loading the changelog, not yet queried): records are
        # stored without their indexes, built by finish_rebuild in one sort per index.
        self.rebuilding = rebuilding
        self.families: dict[FamilyKey, Family] = {}
        # program -> basis -> families: a query touches only one program's segments.
        self.by_program: dict[str, dict[str, dict[FamilyKey, Family]]] = {}
        # Families whose membership or weights changed since the change ledger last looked.
        self.dirty: set[FamilyKey] = set()
        # (program, basis) -> [number of changes applied], shared with those families: the
        # query memo's validity.
        self.versions: dict[tuple[str, str], list[int]] = {}
        self._memo: OrderedDict[_MemoKey, tuple[int, list[SegmentRow]]] = OrderedDict()
        self._memo_rows = 0

    def _family(self, key: FamilyKey) -> Family:
        fam = self.families.get(key)
        if fam is None:
            version = self.versions.get((key[0], key[1]))
            if version is None:
                version = self.versions[(key[0], key[1])] = [0]
            fam = self.families[key] = Family(version)
            self.by_program.setdefault(key[0], {}).setdefault(key[1], {})[key] = fam
        return fam

    def apply(self, ev: Event, offset: int, family: FamilyKey | None = None) -> bool:
        """Apply one event at ``offset`` (its position in the partition); True if stored,
        False if it is not newer than the stored one (older, or a replay of an offset already
        applied). ``family``: the event's family key when the caller has it already."""
        if self.rebuilding:
            self.finish_rebuild()
        key: FamilyKey = family or ev.family
        fam = self.families.get(key)
        if fam is None:
            fam = self._family(key)
        changed = fam.put(ev.user_id, ev.weight, ev.in_history, ev.ts, offset, ev.name)
        if changed is None:
            return False
        fam.version[0] += 1
        if changed:
            self.dirty.add(key)
        return True

    def load(self, family: FamilyKey, user_id: str, weight: float | None, in_history: bool,
             ts: int, offset: int, name: str) -> None:
        """Rebuild path: one stored recommendation back (any order: last-writer-wins holds)."""
        fam = self._family(family)
        if self.rebuilding:
            fam.load(user_id, weight, in_history, ts, offset, name)
        elif fam.put(user_id, weight, in_history, ts, offset, name) is not None:
            fam.version[0] += 1

    def finish_rebuild(self) -> None:
        """End of a rebuild: build every family's indexes; from now on loads and events
        update them one by one."""
        if self.rebuilding:
            for fam in self.families.values():
                fam.build_indexes()
            self.rebuilding = False

    def take_dirty(self) -> set[FamilyKey]:
        dirty, self.dirty = self.dirty, set()
        return dirty

    def query(self, program_id: str, segment_type: str, segment_basis: str,
              min_weight: float) -> list[SegmentRow]:
        """The listed segments (count > 0) of one program, type and basis at ``min_weight``.

        The answer is memoised per (program, basis) version: asked again with no event
        applied to that program and basis since, it is returned as is (the same list: do not
        modify it), which is what it would recompute."""
        self.finish_rebuild()  # (a no-op unless rebuilding)
        counter = self.versions.get((program_id, segment_basis))
        if counter is None:
            return _NOTHING  # no such program and basis here: nothing to remember either
        version = counter[0]
        memo_key = (program_id, segment_type, segment_basis, min_weight)
        hit = self._memo.get(memo_key)
        if hit is not None and hit[0] == version:
            self._memo.move_to_end(memo_key)
            return hit[1]
        out: list[SegmentRow] = []
        families = self.by_program.get(program_id, {}).get(segment_basis)
        if families:
            for (_, basis, basis_id, action), fam in families.items():
                count, mean = fam.index(segment_type).stats_at_least(min_weight)
                if count:
                    out.append(SegmentRow(segment_type, basis, basis_id, action, fam.name, count,
                                          mean))
        if hit is not None:
            del self._memo[memo_key]
            self._memo_rows -= len(hit[1])
        self._memo[memo_key] = (version, out)
        self._memo_rows += len(out)
        while (self._memo_rows > MEMO_MAX_ROWS or len(self._memo) > MEMO_MAX_ANSWERS) and len(
                self._memo) > 1:
            _, (_, dropped) = self._memo.popitem(last=False)
            self._memo_rows -= len(dropped)
        return out

    def records(self) -> Iterator[tuple[FamilyKey, str, StoredRecommendation]]:
        for key, fam in self.families.items():
            for user, rec in fam.records():
                yield key, user, rec

    def recommendations(self) -> int:
        """Recommendations held (withdrawn ones included: their order still counts)."""
        return sum(len(fam) for fam in self.families.values())
