"""Pure aggregation state: per-partition last-writer-wins recommendations and, derived from them,
per-segment threshold indexes (growth / base / discovery) and change tracking.

No Kafka, Faust or aiohttp here: the agents feed events in, the durable table stores what
``apply`` returns, and ``load`` rebuilds the same state from the durable table after recovery.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from streams.events import Event
from streams.threshold_index import ThresholdIndex

SEGMENT_TYPES: tuple[str, ...] = ("growth", "base", "discovery")

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


def emitted_key(family: FamilyKey, segment_type: str, threshold: float) -> bytes:
    return orjson.dumps([*family, segment_type, threshold])


def record_key(family: FamilyKey, user_id: str) -> bytes:
    """Durable-table key of one recommendation."""
    return orjson.dumps([*family, user_id])


def encode_record(rec: Record, partition: int, name: str) -> bytes:
    """Durable-table value: the record, the partition it belongs to, and its event's name."""
    return orjson.dumps([rec.weight, rec.in_history, rec.ts, rec.offset, partition, name])


def decode_record(raw: bytes) -> tuple[Record, int, str]:
    w, hist, ts, offset, partition, name = orjson.loads(raw)
    return Record(None if w is None else float(w), hist, ts, offset), partition, name


class Family:
    """All segments of one (program, basis, basis_id, action_type): three indexes + name."""

    __slots__ = ("base", "discovery", "growth", "name", "name_order", "users")

    def __init__(self) -> None:
        self.users: dict[str, Record] = {}
        self.growth = ThresholdIndex()
        self.base = ThresholdIndex()
        self.discovery = ThresholdIndex()
        self.name = ""
        self.name_order: tuple[int, int] = (-(2**63), -1)

    def index(self, segment_type: str) -> ThresholdIndex:
        if segment_type == "growth":
            return self.growth
        if segment_type == "base":
            return self.base
        return self.discovery

    def _put(self, rec: Record) -> None:
        if rec.weight is not None:
            self.growth.add(rec.weight)
            (self.base if rec.in_history else self.discovery).add(rec.weight)

    def _take(self, rec: Record) -> None:
        if rec.weight is not None:
            self.growth.remove(rec.weight)
            (self.base if rec.in_history else self.discovery).remove(rec.weight)

    def set(self, user_id: str, rec: Record, name: str) -> None:
        old = self.users.get(user_id)
        if old is not None:
            self._take(old)
        self.users[user_id] = rec
        self._put(rec)
        order = (rec.ts, rec.offset)
        if order > self.name_order:
            self.name_order = order
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
        if old is not None and (ev.ts, offset) <= (old.ts, old.offset):
            return None
        rec = Record(ev.weight, ev.in_history, ev.ts, offset)
        fam.set(ev.user_id, rec, ev.name)
        if old is None or old.weight != rec.weight or old.in_history != rec.in_history:
            self.dirty.add(key)
        return rec

    def load(self, family: FamilyKey, user_id: str, rec: Record, name: str) -> None:
        """Rebuild path: put one durable record back (any order; last-writer-wins holds)."""
        fam = self._family(family)
        old = fam.users.get(user_id)
        if old is None or (rec.ts, rec.offset) > (old.ts, old.offset):
            fam.set(user_id, rec, name)

    def load_emitted(self, key: bytes, count: int) -> None:
        self.emitted[key] = count

    def mark_unsettled(self, thresholds: Iterable[float]) -> None:
        """After a rebuild: families whose counts differ from the last emitted change are dirty,
        so a change lost in a crash is emitted again and unchanged ones are not."""
        for key, fam in self.families.items():
            for segment_type in SEGMENT_TYPES:
                idx = fam.index(segment_type)
                for m in thresholds:
                    last = self.emitted.get(emitted_key(key, segment_type, m), 0)
                    if idx.count_at_least(m) != last:
                        self.dirty.add(key)

    def query(self, program_id: str, segment_type: str, segment_basis: str,
              min_weight: float) -> list[SegmentStat]:
        out: list[SegmentStat] = []
        families = self.by_program.get(program_id, {}).get(segment_basis)
        if not families:
            return out
        for (_, basis, basis_id, action), fam in families.items():
            count, mean = fam.index(segment_type).stats_at_least(min_weight)
            if count:
                out.append((segment_type, basis, basis_id, action, fam.name, count, mean))
        return out

    def take_changes(self, thresholds: Iterable[float]) -> list[CountChange]:
        """Counts at watched thresholds that differ from the last emitted ones (dirty families
        only); the caller emits them and then calls ``commit_change``."""
        thresholds = tuple(thresholds)
        changes: list[CountChange] = []
        dirty, self.dirty = self.dirty, set()
        for key in dirty:
            fam = self.families.get(key)
            if fam is None:
                continue
            for segment_type in SEGMENT_TYPES:
                idx = fam.index(segment_type)
                for m in thresholds:
                    count, mean = idx.stats_at_least(m)
                    previous = self.emitted.get(emitted_key(key, segment_type, m), 0)
                    if count != previous:
                        changes.append(CountChange(key[0], segment_type, key[1], key[2], key[3],
                                                   fam.name, m, count, previous, mean))
        return changes

    def commit_change(self, change: CountChange) -> None:
        self.emitted[change.emitted_key] = change.user_count

    def records(self) -> Iterator[tuple[FamilyKey, str, Record]]:
        for key, fam in self.families.items():
            for user, rec in fam.users.items():
                yield key, user, rec
