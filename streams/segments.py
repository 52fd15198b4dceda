"""Pure aggregation state: per-partition last-writer-wins recommendations and, derived from them,
per-segment threshold indexes (growth / base / discovery) and change tracking.

No Kafka, Faust or aiohttp here: the agents feed events in, the durable table stores what
``apply`` returns, and ``load`` rebuilds the same state from the durable table after recovery.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from streams.events import Event, kept
from streams.threshold_index import ThresholdIndex

SEGMENT_TYPES: tuple[str, ...] = ("growth", "base", "discovery")

# Rows the query memo of one partition holds at most (least recently used answers go first).
MEMO_MAX_ROWS = 20_000

# (program_id, segment_basis, basis_id, action_type)
FamilyKey = tuple[str, str, str, str]


class Record(NamedTuple):
    """The durable state of one recommendation: its latest event (greatest (ts, offset))."""

    weight: float | None
    in_history: bool
    ts: int
    offset: int


# (segment_type, segment_basis, segment_basis_id, action_type, name, user_count, strength):
# a plain tuple, so that it travels between workers and into the cache as a JSON array.
SegmentStat = tuple[str, str, str, str, str, int, float]


@dataclass(frozen=True, slots=True)
class CountChange:
    program_id: str
    segment_type: str
    segment_basis: str
    segment_basis_id: str
    action_type: str
    name: str
    min_weight: float
    user_count: int
    previous_user_count: int
    strength: float

    @property
    def emitted_key(self) -> bytes:
        return emitted_key(
            (self.program_id, self.segment_basis, self.segment_basis_id, self.action_type),
            self.segment_type, self.min_weight)


def contract_order(rows: list[SegmentStat]) -> list[SegmentStat]:
    """Sort ``rows`` in place in the contract's order: user_count descending, then
    segment_basis_id, action_type (and name, for a total order) ascending."""
    rows.sort(key=lambda r: (-r[5], r[2], r[3], r[4]))
    return rows


def emitted_key(family: FamilyKey, segment_type: str, threshold: float) -> bytes:
    return kept(orjson.dumps([*family, segment_type, threshold]))


def record_key(family: FamilyKey, user_id: str) -> bytes:
    """Durable-table key of one recommendation (exact size: a batch holds thousands)."""
    return kept(orjson.dumps([*family, user_id]))


def encode_record(rec: Record, partition: int, name: str) -> bytes:
    """Durable-table value: the record, the partition it belongs to, and its event's name."""
    return kept(orjson.dumps([rec.weight, rec.in_history, rec.ts, rec.offset, partition, name]))


def decode_record(raw: bytes) -> tuple[Record, int, str]:
    w, hist, ts, offset, partition, name = orjson.loads(raw)
    return Record(None if w is None else float(w), hist, ts, offset), partition, name


# How a Family holds one recommendation: a plain tuple (weight, in_history, order) with
# order = ts * 2**64 + offset, which sorts exactly like (ts, offset) for any int ts and any
# Kafka offset (0 <= offset < 2**63). A plain tuple of atoms is untracked by the garbage
# collector after its first collection (a NamedTuple instance never is: a million of them made
# each full collection take ~240 ms), and one int instead of two saves ~36 bytes.
Stored = tuple[float | None, bool, int]
_ORDER_SHIFT = 64
_OFFSET_MASK = (1 << _ORDER_SHIFT) - 1
_NO_ORDER = -(1 << 256)  # below every order (orjson's ints are within 64 bits)


def order_of(ts: int, offset: int) -> int:
    return (ts << _ORDER_SHIFT) + offset


def unpack(stored: Stored) -> Record:
    w, hist, order = stored
    return Record(w, hist, order >> _ORDER_SHIFT, order & _OFFSET_MASK)


class Family:
    """All segments of one (program, basis, basis_id, action_type): three indexes + name."""

    __slots__ = ("base", "discovery", "growth", "name", "name_order", "users")

    def __init__(self) -> None:
        self.users: dict[str, Stored] = {}
        self.growth = ThresholdIndex()
        self.base = ThresholdIndex()
        self.discovery = ThresholdIndex()
        self.name = ""
        self.name_order = _NO_ORDER  # order of the event the name comes from

    def index(self, segment_type: str) -> ThresholdIndex:
        if segment_type == "growth":
            return self.growth
        if segment_type == "base":
            return self.base
        return self.discovery

    def set(self, user_id: str, stored: Stored, name: str) -> None:
        old = self.users.get(user_id)
        if old is not None and old[0] is not None:
            self.growth.remove(old[0])
            (self.base if old[1] else self.discovery).remove(old[0])
        # Interned: a user appears in many segments; they then share one string.
        self.users[sys.intern(user_id)] = stored
        w = stored[0]
        if w is not None:
            self.growth.add(w)
            (self.base if stored[1] else self.discovery).add(w)
        if stored[2] > self.name_order:
            self.name_order = stored[2]
            self.name = name


class PartitionState:
    """Everything one partition of the repartition topic holds."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.families: dict[FamilyKey, Family] = {}
        # program -> basis -> families: a query touches only one program's segments.
        self.by_program: dict[str, dict[str, dict[FamilyKey, Family]]] = {}
        self.dirty: set[FamilyKey] = set()
        self.emitted: dict[bytes, int] = {}
        # Emitted key -> previous count of a change recorded as "about to be published" whose
        # publication was never confirmed (the worker died in between): re-published once.
        self.uncertain: dict[bytes, int] = {}
        # (program, basis) -> number of changes applied: the query memo's validity.
        self.versions: dict[tuple[str, str], int] = {}
        self._memo: OrderedDict[tuple[str, str, str, float],
                                tuple[int, list[SegmentStat]]] = OrderedDict()
        self._memo_rows = 0

    def _family(self, key: FamilyKey) -> Family:
        fam = self.families.get(key)
        if fam is None:
            fam = self.families[key] = Family()
            self.by_program.setdefault(key[0], {}).setdefault(key[1], {})[key] = fam
        return fam

    def apply(self, ev: Event, offset: int) -> Record | None:
        """Apply one event at ``offset``; return the new durable record, or None if it is not
        newer than the stored one (older, or a replay of an offset already applied)."""
        key: FamilyKey = (ev.program_id, ev.segment_basis, ev.basis_id, ev.action_type)
        fam = self._family(key)
        old = fam.users.get(ev.user_id)
        order = order_of(ev.ts, offset)
        if old is not None and order <= old[2]:
            return None
        fam.set(ev.user_id, (ev.weight, ev.in_history, order), ev.name)
        self._changed(ev.program_id, ev.segment_basis)
        if old is None or old[0] != ev.weight or old[1] != ev.in_history:
            self.dirty.add(key)
        return Record(ev.weight, ev.in_history, ev.ts, offset)

    def load(self, family: FamilyKey, user_id: str, rec: Record, name: str) -> None:
        """Rebuild path: put one durable record back (any order; last-writer-wins holds)."""
        fam = self._family(family)
        old = fam.users.get(user_id)
        order = order_of(rec.ts, rec.offset)
        if old is None or order > old[2]:
            fam.set(user_id, (rec.weight, rec.in_history, order), name)
            self._changed(family[0], family[1])

    def load_emitted(self, key: bytes, count: int, previous: int | None = None) -> None:
        """Rebuild path: the last emitted-counts record of one segment and threshold. With
        ``previous``, it is the intent written before publishing ``previous -> count``: the
        change may or may not have reached the change topic."""
        self.emitted[key] = count
        if previous is None:
            self.uncertain.pop(key, None)
        else:
            self.uncertain[key] = previous

    def mark_unsettled(self, thresholds: Iterable[float]) -> None:
        """After a rebuild: families whose counts differ from the last emitted change, or whose
        last publication is unconfirmed, are dirty; unchanged ones are not."""
        for key, fam in self.families.items():
            for segment_type in SEGMENT_TYPES:
                idx = fam.index(segment_type)
                for m in thresholds:
                    ek = emitted_key(key, segment_type, m)
                    if ek in self.uncertain or idx.count_at_least(m) != self.emitted.get(ek, 0):
                        self.dirty.add(key)

    def _changed(self, program_id: str, segment_basis: str) -> None:
        key = (program_id, segment_basis)
        self.versions[key] = self.versions.get(key, 0) + 1

    def query(self, program_id: str, segment_type: str, segment_basis: str,
              min_weight: float) -> list[SegmentStat]:
        """The listed segments (count > 0) of one program, type and basis at ``min_weight``.

        The answer is memoised per (program, basis) version: asked again with no event
        applied to that program and basis since, it is returned as is (the same list: do not
        modify it), which is what it would recompute."""
        version = self.versions.get((program_id, segment_basis), 0)
        memo_key = (program_id, segment_type, segment_basis, min_weight)
        hit = self._memo.get(memo_key)
        if hit is not None and hit[0] == version:
            self._memo.move_to_end(memo_key)
            return hit[1]
        out: list[SegmentStat] = []
        families = self.by_program.get(program_id, {}).get(segment_basis)
        if families:
            for (_, basis, basis_id, action), fam in families.items():
                count, mean = fam.index(segment_type).stats_at_least(min_weight)
                if count:
                    out.append((segment_type, basis, basis_id, action, fam.name, count, mean))
        self._memo[memo_key] = (version, out)
        self._memo_rows += len(out) - (len(hit[1]) if hit is not None else 0)
        while self._memo_rows > MEMO_MAX_ROWS and len(self._memo) > 1:
            _, (_, dropped) = self._memo.popitem(last=False)
            self._memo_rows -= len(dropped)
        return out

    def take_changes(self, thresholds: Iterable[float]) -> list[CountChange]:
        """Counts at watched thresholds that differ from the last emitted ones (dirty families
        only), and unconfirmed publications again (the same change when the count is still
        the one it announced); the caller publishes them and then calls ``commit_change``."""
        thresholds = tuple(thresholds)
        changes: list[CountChange] = []
        dirty, self.dirty = self.dirty, set()
        uncertain = self.uncertain
        for key in dirty:
            fam = self.families.get(key)
            if fam is None:
                continue
            for segment_type in SEGMENT_TYPES:
                idx = fam.index(segment_type)
                for m in thresholds:
                    count, mean = idx.stats_at_least(m)
                    ek = emitted_key(key, segment_type, m)
                    previous = self.emitted.get(ek, 0)
                    if count == previous and ek in uncertain:
                        previous = uncertain[ek]
                    elif count == previous:
                        continue
                    changes.append(CountChange(key[0], segment_type, key[1], key[2], key[3],
                                               fam.name, m, count, previous, mean))
        return changes

    def commit_change(self, change: CountChange) -> None:
        key = change.emitted_key
        self.emitted[key] = change.user_count
        self.uncertain.pop(key, None)

    def records(self) -> Iterator[tuple[FamilyKey, str, Record]]:
        for key, fam in self.families.items():
            for user, stored in fam.users.items():
                yield key, user, unpack(stored)
