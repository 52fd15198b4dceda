"""The segment families of one partition: last-writer-wins recommendations and, derived from
them, the threshold indexes, served by program and basis through a bounded query memo."""

from __future__ import annotations

import heapq
import sys
from collections import OrderedDict
from collections.abc import Iterator

from streams.domain.events import INT64_MIN, Event, FamilyKey
from streams.domain.family import TINY_MAX, Family, StoredRecommendation
from streams.domain.ranking import Ranking, ThresholdView
from streams.domain.rows import SegmentRow, contract_order
from streams.domain.tally import ProgramTally

# Rows and answers the query memo holds at most (least recently used first).
MEMO_MAX_ROWS = 20_000
MEMO_MAX_ANSWERS = 1_000
# Rankings and threshold views (domain/ranking.py) one store keeps, least recently queried
# out first: each holds an entry per family of its program and basis listed in it.
RANKINGS_MAX = 8
# Thresholds recently asked of ``top`` without a view: asked again, a view is built (one count
# of every family), so a one-off threshold costs no view and a repeated one counts nothing.
ASKED_MAX = 64
# Families a threshold view counts per query while it is built (the query is answered from
# the ranking meanwhile): a few milliseconds added to each of its first queries, no spike.
VIEW_STEP = 1024

_MemoKey = tuple[str, str, str, float]  # program, segment type, basis, threshold
# The answer for a program and basis not held here: one shared list, so that the merged
# answers memoised by identity (runtime/query.py) hold for it too. Not to be modified.
_NOTHING: list[SegmentRow] = []


# Contract §2, "Aging, bounded state": the default SEGMENTS_GRACE_MS (7 days).
DEFAULT_GRACE_MS = 7 * 24 * 3600 * 1000
# A family is swept at most this many times per grace period of event time (so a forgotten
# withdrawal's memory is freed at most grace / SWEEPS_PER_GRACE after it is forgotten).
SWEEPS_PER_GRACE = 16
# Slots one call of FamilyStore.expire sweeps at most (then the event loop gets a turn).
SWEEP_BUDGET = 200_000
# Slots (plus families) one step of the end of a rebuild handles (finish_rebuild_steps,
# ChangeLedger.settle_steps): a probe waits for a step or two, so each stays a small part of
# contract §12's bound (BENCHMARKS.md, probes).
SETTLE_BUDGET = 1_500


class FamilyStore:
    """Every segment family of one partition.

    Aging (contract §2): the *watermark* is the greatest ``ts`` applied here minus the grace.
    Withdrawals older than it are forgotten by ``expire`` (their (family, user) queued in
    ``forgotten`` for the owner to tombstone in the changelog); an event older than it for a
    recommendation without state is too late (``apply`` answers None)."""

    def __init__(self, rebuilding: bool = False, grace_ms: int = DEFAULT_GRACE_MS) -> None:
        # While rebuilding (a new owner loading the changelog, not yet queried): records are
        # stored without their indexes, built by finish_rebuild in one sort per index.
        self.rebuilding = rebuilding
        self.families: dict[FamilyKey, Family] = {}
        # program -> basis -> families: a query touches only one program's segments.
        self.by_program: dict[str, dict[str, dict[FamilyKey, Family]]] = {}
        # Families whose membership or weights changed since the change ledger last looked.
        self.dirty: set[FamilyKey] = set()
        # Families of the change publisher's turn in progress not taken yet (its set: see
        # runtime/publisher.py), and those whose changes its round in flight publishes: to be
        # published (again, if the round fails), so kept like dirty ones.
        self.turn: set[FamilyKey] = set()
        self.in_flight: set[FamilyKey] = set()
        # (program, basis) -> [number of changes applied], shared with those families: the
        # query memo's validity.
        self.versions: dict[tuple[str, str], list[int]] = {}
        self._memo: OrderedDict[_MemoKey, tuple[int, list[SegmentRow]]] = OrderedDict()
        self._memo_rows = 0
        # The first rows of a query (``top``), memoised as ``_memo``: (version, rows, total).
        self._tops: OrderedDict[_MemoKey, tuple[int, list[SegmentRow], int]] = OrderedDict()
        self._tops_rows = 0
        # (program, type, basis, threshold or None) -> its view (or ranking: None); (program,
        # basis) -> its views and rankings, which every event stored in its families is told of.
        self._rankings: OrderedDict[tuple[str, str, str, float | None],
                                    Ranking | ThresholdView] = OrderedDict()
        self._ranked: dict[tuple[str, str], list[Ranking | ThresholdView]] = {}
        self._asked: OrderedDict[_MemoKey, None] = OrderedDict()
        self.grace_ms = grace_ms
        self.max_ts: int | None = None  # the greatest ts applied (or loaded)
        # (oldest withdrawal's ts, family) per family holding withdrawals; an entry whose ts is
        # not the one in ``_expiring`` is stale (the family was swept or rescheduled since).
        self._expiry: list[tuple[int, FamilyKey]] = []
        self._expiring: dict[FamilyKey, int] = {}
        # Large families swept lately -> the event time before which they are not swept again.
        self._not_before: dict[FamilyKey, int] = {}
        # Forgotten recommendations whose changelog records are still to be tombstoned.
        self.forgotten: list[tuple[FamilyKey, str]] = []
        self.forgotten_total = 0
        # Slots of all families (``recommendations()``), kept up to date by every method that
        # adds or frees one: what a probe or a scrape reads, never a walk of the families.
        self.held = 0
        # Told of every program this store gains or loses, while its partition is active.
        self.tally: ProgramTally | None = None

    def _family(self, key: FamilyKey) -> Family:
        fam = self.families.get(key)
        if fam is None:
            # One key object per family, its program, basis and action interned (few values,
            # each in thousands of families): the store, its queues and the ledger share it.
            intern = sys.intern
            key = (intern(key[0]), intern(key[1]), key[2], intern(key[3]))
            version = self.versions.get((key[0], key[1]))
            if version is None:
                version = self.versions[(key[0], key[1])] = [0]
            fam = self.families[key] = Family(key, version)
            bases = self.by_program.get(key[0])
            if bases is None:
                bases = self.by_program[key[0]] = {}
                if self.tally is not None:
                    self.tally.gained(key[0])
            bases.setdefault(key[1], {})[key] = fam
        return fam

    @property
    def watermark(self) -> int | None:
        """The greatest ts applied minus the grace; None before any event."""
        return None if self.max_ts is None else self.max_ts - self.grace_ms

    def apply(self, ev: Event, offset: int, family: FamilyKey | None = None) -> bool | None:
        """Apply one event at ``offset`` (its order among events of equal ts: the input
        record's position, as the runtime computes it); True if stored,
        False if it is not newer than the stored one (older, or a replay of an offset already
        applied), None if it is too late: older than the watermark, for a recommendation that
        holds no state. ``family``: the event's family key when the caller has it already."""
        if self.rebuilding:
            self.finish_rebuild()
        key: FamilyKey = family or ev.family
        fam = self.families.get(key)
        ts = ev.ts
        max_ts = self.max_ts
        if max_ts is not None and ts < max_ts - self.grace_ms and (
                fam is None or not fam.holds(ev.user_id, max_ts - self.grace_ms)):
            return None
        if fam is None:
            fam = self._family(key)
        size = len(fam)
        changed = fam.put(ev.user_id, ev.weight, ev.in_history, ts, offset, ev.name)
        if changed is None:
            return False
        self.held += len(fam) - size
        if max_ts is None or ts > max_ts:
            self.max_ts = ts
        if ev.weight is None:
            self._expire_later(fam.key, ts)
        fam.version[0] += 1
        if changed:
            self.dirty.add(fam.key)
        if self._ranked:  # (not only if changed: a view's rows hold the name too)
            self._touch(fam.key)
        return True

    def load(self, family: FamilyKey, user_id: str, weight: float | None, in_history: bool,
             ts: int, offset: int, name: str) -> None:
        """Rebuild path: one stored recommendation back (any order: last-writer-wins holds)."""
        fam = self._family(family)
        size = len(fam)
        if self.rebuilding:
            fam.load(user_id, weight, in_history, ts, offset, name)
        elif fam.put(user_id, weight, in_history, ts, offset, name) is not None:
            fam.version[0] += 1
        if self._ranked:
            self._touch(fam.key)
        self.held += len(fam) - size
        if self.max_ts is None or ts > self.max_ts:
            self.max_ts = ts
        if weight is None:
            self._expire_later(fam.key, ts)

    def load_tombstone(self, family: FamilyKey, user_id: str) -> None:
        """Rebuild path: a recommendation forgotten by the owner; no state from now on."""
        fam = self.families.get(family)
        if fam is not None and fam.forget(user_id, indexed=not self.rebuilding):
            fam.version[0] += 1
            if self._ranked:
                self._touch(fam.key)
            self._expire_later(fam.key, INT64_MIN)

    def _touch(self, key: FamilyKey) -> None:
        """Tell the views and rankings of ``key``'s program and basis that the family
        changed (every change of its members, weights or name must: they trust their
        entries)."""
        ranked = self._ranked.get((key[0], key[1]))
        if ranked:
            for ranking in ranked:
                ranking.dirty.add(key)

    def _expire_later(self, family: FamilyKey, ts: int) -> None:
        """``family`` holds a withdrawal at ``ts``: look at it once the watermark passes it
        (a large family not before its next slice of the grace)."""
        not_before = self._not_before.get(family) if self._not_before else None
        if not_before is not None and ts < not_before:
            ts = not_before
        due = self._expiring.get(family)
        if due is None or ts < due:
            self._expiring[family] = ts
            heapq.heappush(self._expiry, (ts, family))

    def expire(self, budget: int = SWEEP_BUDGET) -> int:
        """Forget the withdrawals older than the watermark: their slots freed, each queued in
        ``forgotten``, a family left without recommendation removed (once its last count
        change is taken). Sweeps families of about ``budget`` slots in all, the oldest due
        first; the others stay due for the next call (what holds state does not depend on it:
        ``Family.holds``). Returns how many were forgotten."""
        watermark = self.watermark
        expiry = self._expiry
        if watermark is None or not expiry or expiry[0][0] >= watermark:
            return 0
        n = 0
        later: list[FamilyKey] = []
        slice_ms = self.grace_ms // SWEEPS_PER_GRACE
        while expiry and expiry[0][0] < watermark and budget > 0:
            ts, key = heapq.heappop(expiry)
            if self._expiring.get(key) != ts:
                continue  # stale
            del self._expiring[key]
            fam = self.families.get(key)
            if fam is None:
                self._not_before.pop(key, None)
                continue
            size = len(fam)
            budget -= size
            gone, oldest = fam.sweep(watermark)
            self.held += len(fam) - size
            if gone:
                n += len(gone)
                self.forgotten.extend((key, user) for user in gone)
            # A large family is swept (one pass over it) a bounded number of times per grace
            # period, whatever the timestamps of the withdrawals it gets meanwhile.
            if len(fam.slots) > TINY_MAX:
                self._not_before[key] = watermark + slice_ms
            else:
                self._not_before.pop(key, None)
            if oldest is not None:
                self._expire_later(key, max(oldest, watermark + slice_ms))
            elif not fam.slots:
                if key in self.dirty or key in self.turn or key in self.in_flight:
                    later.append(key)  # its count change is still to be published
                else:
                    self._drop(key)
        for key in later:
            self._expire_later(key, watermark - 1)
        self.forgotten_total += n
        return n

    def take_forgotten(self) -> list[tuple[FamilyKey, str]]:
        forgotten, self.forgotten = self.forgotten, []
        return forgotten

    def _drop(self, key: FamilyKey) -> None:
        """Remove an empty family (no version bump: it lists no segment)."""
        self.held -= len(self.families.pop(key))  # (0: it is empty)
        if self._ranked:
            self._touch(key)
        self._not_before.pop(key, None)
        bases = self.by_program[key[0]]
        families = bases[key[1]]
        del families[key]
        if not families:
            del bases[key[1]]
            if not bases:
                del self.by_program[key[0]]
                if self.tally is not None:
                    self.tally.lost(key[0])
            # No family of this program and basis is left: its query counter goes, and with it
            # the answers memoised under it (a new counter starts again at 0).
            del self.versions[(key[0], key[1])]
            for memo_key in [k for k in self._memo if k[0] == key[0] and k[2] == key[1]]:
                self._memo_rows -= len(self._memo.pop(memo_key)[1])
            for memo_key in [k for k in self._tops if k[0] == key[0] and k[2] == key[1]]:
                self._tops_rows -= len(self._tops.pop(memo_key)[1])
            for ranking in self._ranked.pop((key[0], key[1]), ()):
                del self._rankings[_ranking_key(key[0], key[1], ranking)]

    def finish_rebuild(self) -> None:
        """End of a rebuild: build every family's indexes; from now on loads and events
        update them one by one."""
        for _ in self.finish_rebuild_steps(sys.maxsize):
            pass

    def finish_rebuild_steps(self, budget: int = SETTLE_BUDGET) -> Iterator[None]:
        """``finish_rebuild`` in steps of about ``budget`` slots each (the caller gives the
        event loop a turn at each). The store leaves the rebuilding mode at once: a family
        whose indexes are not built yet answers from its columns (``Family.count_at_least``)
        and is updated like any other, so events and loads between steps stay exact."""
        if not self.rebuilding:
            return
        self.rebuilding = False
        work = 0
        for fam in list(self.families.values()):
            if fam.indexes is None and isinstance(fam.slots, dict):
                fam.build_indexes()
                work += len(fam.slots)
            work += 1
            if work >= budget:
                work = 0
                yield

    def take_dirty(self, limit: int | None = None) -> set[FamilyKey]:
        """The dirty families (at most ``limit`` of them, the others stay dirty)."""
        dirty = self.dirty
        if limit is None or len(dirty) <= limit:
            self.dirty = set()
            return dirty
        return {dirty.pop() for _ in range(limit)}

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
                count, mean = fam.stats_at_least(segment_type, min_weight)
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

    def top(self, program_id: str, segment_type: str, segment_basis: str, min_weight: float,
            limit: int | None) -> tuple[list[SegmentRow], int]:
        """The first ``limit`` listed segments (None: all) of ``query``'s answer, in the
        contract's order, and how many it lists in all: counted only as far as a ranking of
        the families by their members needs (domain/ranking.py), not for every segment, or
        read from a threshold view.

        Memoised as ``query`` is (the same list while nothing changed: do not modify it)."""
        if limit is None:
            rows = self.query(program_id, segment_type, segment_basis, min_weight)
            return contract_order(list(rows)), len(rows)
        got = self.top_or_ranking(program_id, segment_type, segment_basis, min_weight, limit)
        if not isinstance(got, Ranking):
            return got
        rows, total = got.first(min_weight, limit), got.total(min_weight)
        self._memoise_top((program_id, segment_type, segment_basis, min_weight), rows, total)
        return rows, total

    def top_or_ranking(self, program_id: str, segment_type: str, segment_basis: str,
                       min_weight: float, limit: int) -> tuple[list[SegmentRow], int] | Ranking:
        """``top``'s answer when it needs no counting (memoised, or from a threshold view),
        else the query's ranking, synced, for the caller to scan (ranking.first_of: with
        other partitions' rankings)."""
        self.finish_rebuild()  # (a no-op unless rebuilding)
        counter = self.versions.get((program_id, segment_basis))
        if counter is None:
            return _NOTHING, 0
        version = counter[0]
        memo_key = (program_id, segment_type, segment_basis, min_weight)
        hit = self._tops.get(memo_key)
        if hit is not None and hit[0] == version and (limit <= len(hit[1]) or len(
                hit[1]) == hit[2]):
            self._tops.move_to_end(memo_key)
            return (hit[1] if limit >= len(hit[1]) else hit[1][:limit]), hit[2]
        view = self._rankings.get(memo_key)
        if view is None and memo_key in self._asked:
            del self._asked[memo_key]
            view = self._ranked_by(memo_key, ThresholdView(
                segment_type, min_weight, self._families_of(program_id, segment_basis)))
        if isinstance(view, ThresholdView):
            self._rankings.move_to_end(memo_key)
            view.sync(self.families)
        if isinstance(view, ThresholdView) and view.build(self.families, VIEW_STEP):
            rows, total = view.first(limit), view.total()
            self._memoise_top(memo_key, rows, total)
            return rows, total
        if view is None:
            self._asked[memo_key] = None
            while len(self._asked) > ASKED_MAX:
                self._asked.popitem(last=False)
        ranking = self._ranking(program_id, segment_type, segment_basis)
        ranking.sync(self.families)
        return ranking

    def _memoise_top(self, memo_key: _MemoKey, rows: list[SegmentRow], total: int) -> None:
        counter = self.versions[(memo_key[0], memo_key[2])]
        hit = self._tops.pop(memo_key, None)
        if hit is not None:
            self._tops_rows -= len(hit[1])
        self._tops[memo_key] = (counter[0], rows, total)
        self._tops_rows += len(rows)
        while (self._tops_rows > MEMO_MAX_ROWS or len(self._tops) > MEMO_MAX_ANSWERS) and len(
                self._tops) > 1:
            _, (_, dropped, _) = self._tops.popitem(last=False)
            self._tops_rows -= len(dropped)

    def _families_of(self, program_id: str, segment_basis: str) -> dict[FamilyKey, Family]:
        return self.by_program.get(program_id, {}).get(segment_basis, {})

    def _ranking(self, program_id: str, segment_type: str, segment_basis: str) -> Ranking:
        key = (program_id, segment_type, segment_basis, None)
        ranking = self._rankings.get(key)
        if isinstance(ranking, Ranking):
            self._rankings.move_to_end(key)
            return ranking
        built = Ranking(segment_type, self._families_of(program_id, segment_basis))
        self._ranked_by(key, built)
        return built

    def _ranked_by(self, key: tuple[str, str, str, float | None],
                   ranking: Ranking | ThresholdView) -> Ranking | ThresholdView:
        """Keep ``ranking`` under ``key`` (the least recently used beyond RANKINGS_MAX go)."""
        self._rankings[key] = ranking
        self._ranked.setdefault((key[0], key[2]), []).append(ranking)
        while len(self._rankings) > RANKINGS_MAX:
            (program, _, basis, _), dropped = self._rankings.popitem(last=False)
            ranked = self._ranked[(program, basis)]
            ranked.remove(dropped)
            if not ranked:
                del self._ranked[(program, basis)]
        return ranking

    def records(self) -> Iterator[tuple[FamilyKey, str, StoredRecommendation]]:
        for key, fam in self.families.items():
            for user, rec in fam.records():
                yield key, user, rec

    def recommendations(self) -> int:
        """Recommendations held (withdrawn ones included: their order still counts), forgotten
        ones not swept yet included: O(1), maintained (``held``)."""
        return self.held

    def segments(self) -> int:
        """Segment families held."""
        return len(self.families)

    def walk_recommendations(self) -> int:
        """``recommendations()`` by a walk of every family (for tests: what ``held`` equals)."""
        return sum(len(fam) for fam in self.families.values())


def _ranking_key(program_id: str, segment_basis: str, ranking: Ranking | ThresholdView
                 ) -> tuple[str, str, str, float | None]:
    threshold = ranking.threshold if isinstance(ranking, ThresholdView) else None
    return (program_id, ranking.segment_type, segment_basis, threshold)
