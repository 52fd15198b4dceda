"""Pure aggregation state: per-partition last-writer-wins recommendations and, derived from them,
per-segment threshold indexes (growth / base / discovery) and change tracking.

No Kafka, Faust or aiohttp here: the agents feed events in, the durable table stores what
``apply`` returns, and ``load`` rebuilds the same state from the durable table after recovery.
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Literal, NamedTuple

import msgspec
from msgspec import Meta

from streams.events import Event, encode_exact
from streams.exceptions import SegmentStreamError
from streams.threshold_index import ThresholdIndex

SEGMENT_TYPES: tuple[str, ...] = ("growth", "base", "discovery")

# Rows and answers the query memo of one partition holds at most (least recently used first).
MEMO_MAX_ROWS = 20_000
MEMO_MAX_ANSWERS = 1_000

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


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~3x (thousands a tick)
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
    # Key of the segment and threshold in the emitted-counts table (computed when missing).
    key: bytes = field(default=b"", compare=False, repr=False)

    @property
    def emitted_key(self) -> bytes:
        return self.key or emitted_key(
            (self.program_id, self.segment_basis, self.segment_basis_id, self.action_type),
            self.segment_type, self.min_weight)


def contract_order(rows: list[SegmentStat]) -> list[SegmentStat]:
    """Sort ``rows`` in place in the contract's order: user_count descending, then
    segment_basis_id, action_type (and name, for a total order) ascending."""
    rows.sort(key=lambda r: (-r[5], r[2], r[3], r[4]))
    return rows


def emitted_key(family: FamilyKey, segment_type: str, threshold: float) -> bytes:
    return encode_exact([*family, segment_type, threshold])


def record_key(family: FamilyKey, user_id: str) -> bytes:
    """Durable-table key of one recommendation (exact size: a batch holds thousands)."""
    return encode_exact([*family, user_id])


def encode_record(rec: Record, partition: int, name: str) -> bytes:
    """Durable-table value: the record, the partition it belongs to, and its event's name."""
    return encode_exact([rec.weight, rec.in_history, rec.ts, rec.offset, partition, name])


class MalformedRecord(SegmentStreamError):
    """A changelog record that is not what this product writes."""


_INT64 = Meta(ge=-(1 << 63), le=(1 << 63) - 1)
_COUNT = Meta(ge=0, le=(1 << 63) - 1)


class _DurableKey(msgspec.Struct, array_like=True, forbid_unknown_fields=True, gc=False):
    program_id: Annotated[str, Meta(min_length=1, max_length=128)]
    segment_basis: Literal["label", "asset"]
    basis_id: Annotated[str, Meta(min_length=1, max_length=256)]
    action_type: Annotated[str, Meta(min_length=1, max_length=64)]
    user_id: Annotated[str, Meta(min_length=1, max_length=256)]


class _DurableValue(msgspec.Struct, array_like=True, forbid_unknown_fields=True,
                    gc=False):
    weight: Annotated[float, Meta(ge=0, le=1)] | None
    in_history: bool
    ts: Annotated[int, _INT64]
    offset: Annotated[int, _COUNT]
    partition: Annotated[int, _COUNT]
    name: Annotated[str, Meta(max_length=512)]


class _EmittedValue(msgspec.Struct, array_like=True, forbid_unknown_fields=True,
                    gc=False):
    count: Annotated[int, _COUNT]
    partition: Annotated[int, _COUNT]
    previous: Annotated[int, _COUNT] | None = None


_durable_key = msgspec.json.Decoder(_DurableKey)
_durable_value = msgspec.json.Decoder(_DurableValue)
_emitted_value = msgspec.json.Decoder(_EmittedValue)


def decode_durable(key: bytes, value: bytes, partition: int
                   ) -> tuple[FamilyKey, str, Record, str]:
    """A durable-table record as written (``record_key``, ``encode_record``) of changelog
    partition ``partition``: (family, user_id, record, name). Raises MalformedRecord."""
    k, v = _decode_durable(key, value, partition)
    return ((k.program_id, k.segment_basis, k.basis_id, k.action_type), k.user_id,
            Record(v.weight, v.in_history, v.ts, v.offset), v.name)


def _decode_durable(key: bytes, value: bytes, partition: int
                    ) -> tuple[_DurableKey, _DurableValue]:
    try:
        k = _durable_key.decode(key)
        v = _durable_value.decode(value)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MalformedRecord(f"{exc}") from None
    if v.partition != partition:
        raise MalformedRecord(f"a record of partition {v.partition}")
    return k, v


def decode_emitted(value: bytes, partition: int) -> tuple[int, int | None]:
    """An emitted-counts record of changelog partition ``partition``: its count, and for an
    intent (a change about to be published) the previous count. Raises MalformedRecord."""
    try:
        v = _emitted_value.decode(value)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MalformedRecord(f"{exc}") from None
    if v.partition != partition:
        raise MalformedRecord(f"a record of partition {v.partition}")
    return v.count, v.previous


def encode_applied(ev: Event, offset: int, partition: int) -> bytes:
    """``encode_record`` of the record an event applied at ``offset`` stored (the hot path:
    no ``Record`` in between)."""
    return encode_exact([ev.weight, ev.in_history, ev.ts, offset, partition, ev.name])


# How a Family holds its recommendations: in columns. Each user has a slot (a small int: the
# ints up to 256 are shared objects), and per slot the weight in an array of doubles (NaN for a
# withdrawn one), the order (ts, offset) in an array of signed 64-bit ints, and in_history in a
# bytearray: ~25 bytes per recommendation where a tuple, a float and an int took ~130, and no
# small objects for the garbage collector to walk or to pin the allocator's arenas. Kafka's
# timestamps and offsets are signed 64-bit ints, and so are the events' ts (validated).
_WITHDRAWN = float("nan")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_NO_ORDER = (_INT64_MIN - 1, 0)  # before every event


class Family:
    """All segments of one (program, basis, basis_id, action_type): the latest state of each
    user's recommendation, the three threshold indexes and the name."""

    __slots__ = ("base", "discovery", "ekeys", "growth", "hist", "name", "name_order",
                 "orders", "slots", "version", "weights")

    def __init__(self, version: list[int] | None = None) -> None:
        self.slots: dict[str, int] = {}
        self.weights = array("d")
        self.orders = array("q")  # ts, offset of slot i at 2 * i, 2 * i + 1
        self.hist = bytearray()
        self.growth = ThresholdIndex()
        self.base = ThresholdIndex()
        self.discovery = ThresholdIndex()
        self.name = ""
        self.name_order = _NO_ORDER  # (ts, offset) of the event the name comes from
        # Changes applied to the families of this program and basis (a counter they share,
        # bumped by their owner: PartitionState.apply), the query memo's validity.
        self.version = [0] if version is None else version
        # Emitted-counts keys of the family's segments at the watched thresholds (in
        # PartitionState.take_changes's order), made when it first changes.
        self.ekeys: tuple[bytes, ...] | None = None

    def __len__(self) -> int:
        """Recommendations held (withdrawn ones included: their order still counts)."""
        return len(self.slots)

    def index(self, segment_type: str) -> ThresholdIndex:
        if segment_type == "growth":
            return self.growth
        if segment_type == "base":
            return self.base
        return self.discovery

    def get(self, user_id: str) -> Record | None:
        slot = self.slots.get(user_id)
        return None if slot is None else self._record(slot)

    def _record(self, slot: int) -> Record:
        w = self.weights[slot]
        return Record(None if w != w else w, bool(self.hist[slot]), self.orders[2 * slot],
                      self.orders[2 * slot + 1])

    def put(self, user_id: str, weight: float | None, in_history: bool, ts: int, offset: int,
            name: str, durable: bool = False) -> bool | None:
        """Last-writer-wins: store the event at (ts, offset) unless the stored one is as
        recent. None: not stored; True: stored and the user's membership or weight changed;
        False: stored, only its order (and maybe the name) moved.

        A withdrawal of a recommendation that is not held is not stored: it withdraws
        nothing, and storing it would let anyone grow the state without bound. (``durable``:
        the event comes from the durable table, which holds only withdrawals of recommendations
        held before: stored.)"""
        slot = self.slots.get(user_id)
        if slot is None:
            if weight is None and not durable:
                return None
            self._append(user_id, weight, in_history, ts, offset)
        else:
            if not self._advance(slot, ts, offset):
                return None
            old = self.weights[slot]
            old_hist = self.hist[slot]
            if old == old:  # not withdrawn
                if old == weight and old_hist == in_history:
                    self._rename(ts, offset, name)
                    return False
                self.growth.remove(old)
                (self.base if old_hist else self.discovery).remove(old)
            elif weight is None:
                self._rename(ts, offset, name)
                return False
            self.weights[slot] = _WITHDRAWN if weight is None else weight
            self.hist[slot] = in_history
        if weight is not None:
            self.growth.add(weight)
            (self.base if in_history else self.discovery).add(weight)
        self._rename(ts, offset, name)
        return True

    def load(self, user_id: str, weight: float | None, in_history: bool, ts: int, offset: int,
             name: str) -> bool:
        """Rebuild path: ``put`` without the indexes (``build_indexes`` makes them once all
        records are in). True if stored."""
        slot = self.slots.get(user_id)
        if slot is None:
            self._append(user_id, weight, in_history, ts, offset)
        elif self._advance(slot, ts, offset):
            self.weights[slot] = _WITHDRAWN if weight is None else weight
            self.hist[slot] = in_history
        else:
            return False
        self._rename(ts, offset, name)
        return True

    def _append(self, user_id: str, weight: float | None, in_history: bool, ts: int,
                offset: int) -> None:
        """A new user's slot."""
        # Interned: a user appears in many segments; they then share one string.
        self.slots[sys.intern(user_id)] = len(self.weights)
        self.weights.append(_WITHDRAWN if weight is None else weight)
        self.orders.append(ts)
        self.orders.append(offset)
        self.hist.append(in_history)

    def _advance(self, slot: int, ts: int, offset: int) -> bool:
        """Move the slot's order to (ts, offset) if that is more recent; False if not."""
        orders = self.orders
        o = 2 * slot
        stored_ts = orders[o]
        if ts < stored_ts or (ts == stored_ts and offset <= orders[o + 1]):
            return False
        orders[o] = ts
        orders[o + 1] = offset
        return True

    def build_indexes(self) -> None:
        """The three indexes from the stored weights, each in one sort."""
        growth: list[float] = []
        base: list[float] = []
        discovery: list[float] = []
        for w, h in zip(self.weights, self.hist, strict=True):
            if w == w:  # not withdrawn
                growth.append(w)
                (base if h else discovery).append(w)
        self.growth = ThresholdIndex.of(growth)
        self.base = ThresholdIndex.of(base)
        self.discovery = ThresholdIndex.of(discovery)

    def _rename(self, ts: int, offset: int, name: str) -> None:
        if (ts, offset) > self.name_order:
            self.name_order = (ts, offset)
            self.name = name

    def records(self) -> Iterator[tuple[str, Record]]:
        for user, slot in self.slots.items():
            yield user, self._record(slot)


class PartitionState:
    """Everything one partition of the repartition topic holds."""

    def __init__(self, partition: int, rebuilding: bool = False) -> None:
        self.partition = partition
        # While rebuilding (a new owner loading the changelog, not yet queried): records are
        # stored without their indexes, built by finish_rebuild in one sort per index.
        self.rebuilding = rebuilding
        self.families: dict[FamilyKey, Family] = {}
        # program -> basis -> families: a query touches only one program's segments.
        self.by_program: dict[str, dict[str, dict[FamilyKey, Family]]] = {}
        self.dirty: set[FamilyKey] = set()
        self.emitted: dict[bytes, int] = {}
        # Emitted key -> previous count of a change recorded as "about to be published" whose
        # publication was never confirmed (the worker died in between): re-published once.
        self.uncertain: dict[bytes, int] = {}
        # Emitted key -> count of changes published but not yet recorded as published.
        self.unconfirmed: dict[bytes, int] = {}
        self._watched: tuple[float, ...] = ()  # the thresholds of the families' ekeys
        # (program, basis) -> [number of changes applied], shared with those families: the
        # query memo's validity.
        self.versions: dict[tuple[str, str], list[int]] = {}
        self._memo: OrderedDict[tuple[str, str, str, float],
                                tuple[int, list[SegmentStat]]] = OrderedDict()
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
        """Apply one event at ``offset``; True if stored (its durable record is then
        ``encode_applied(ev, offset, partition)``), False if it is not newer than the stored
        one (older, or a replay of an offset already applied). ``family``: the event's
        family key when the caller has it already."""
        if self.rebuilding:
            self.finish_rebuild()
        key: FamilyKey = family or (ev.program_id, ev.segment_basis, ev.basis_id,
                                    ev.action_type)
        fam = self.families.get(key)
        if fam is None:
            if ev.weight is None:
                return False  # withdraws nothing: no state for it (Family.put)
            fam = self._family(key)
        changed = fam.put(ev.user_id, ev.weight, ev.in_history, ev.ts, offset, ev.name)
        if changed is None:
            return False
        fam.version[0] += 1
        if changed:
            self.dirty.add(key)
        return True

    def load(self, family: FamilyKey, user_id: str, rec: Record, name: str) -> None:
        """Rebuild path: put one durable record back (any order; last-writer-wins holds)."""
        self._load(family, user_id, rec.weight, rec.in_history, rec.ts, rec.offset, name)

    def load_durable(self, key: bytes, value: bytes, partition: int | None = None) -> None:
        """Rebuild path: one durable-table record as written (``record_key``,
        ``encode_record``), checked (MalformedRecord) to be of this partition."""
        k, v = _decode_durable(key, value, self.partition if partition is None else partition)
        self._load((k.program_id, k.segment_basis, k.basis_id, k.action_type), k.user_id,
                   v.weight, v.in_history, v.ts, v.offset, v.name)

    def _load(self, family: FamilyKey, user_id: str, weight: float | None, in_history: bool,
              ts: int, offset: int, name: str) -> None:
        fam = self._family(family)
        if self.rebuilding:
            fam.load(user_id, weight, in_history, ts, offset, name)
        elif fam.put(user_id, weight, in_history, ts, offset, name, durable=True) is not None:
            fam.version[0] += 1

    def finish_rebuild(self) -> None:
        """End of a rebuild: build every family's indexes; from now on loads and events
        update them one by one."""
        if self.rebuilding:
            for fam in self.families.values():
                fam.build_indexes()
            self.rebuilding = False

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
        self.finish_rebuild()  # (a no-op unless rebuilding)
        thresholds = tuple(thresholds)
        for key, fam in self.families.items():
            ekeys = self._emitted_keys(key, fam, thresholds)
            i = 0
            for idx in (fam.growth, fam.base, fam.discovery):
                for m in thresholds:
                    ek = ekeys[i]
                    i += 1
                    if ek in self.uncertain or idx.count_at_least(m) != self.emitted.get(ek, 0):
                        self.dirty.add(key)

    def _emitted_keys(self, key: FamilyKey, fam: Family, thresholds: tuple[float, ...]
                      ) -> tuple[bytes, ...]:
        """The family's emitted-counts keys, per segment type (SEGMENT_TYPES) and then per
        threshold (memoised in the family for the watched thresholds)."""
        if thresholds != self._watched:
            self._watched = thresholds
            for f in self.families.values():
                f.ekeys = None
        ekeys = fam.ekeys
        if ekeys is None:
            ekeys = fam.ekeys = tuple(emitted_key(key, t, m)
                                      for t in SEGMENT_TYPES for m in thresholds)
        return ekeys

    def query(self, program_id: str, segment_type: str, segment_basis: str,
              min_weight: float) -> list[SegmentStat]:
        """The listed segments (count > 0) of one program, type and basis at ``min_weight``.

        The answer is memoised per (program, basis) version: asked again with no event
        applied to that program and basis since, it is returned as is (the same list: do not
        modify it), which is what it would recompute."""
        self.finish_rebuild()  # (a no-op unless rebuilding)
        counter = self.versions.get((program_id, segment_basis))
        if counter is None:
            return []  # no such program and basis here: nothing to remember either
        version = counter[0]
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

    def take_changes(self, thresholds: Iterable[float]) -> list[CountChange]:
        """Counts at watched thresholds that differ from the last emitted ones (dirty families
        only), and unconfirmed publications again (the same change when the count is still
        the one it announced); the caller publishes them and then calls ``commit_change``."""
        self.finish_rebuild()  # (a no-op unless rebuilding)
        thresholds = tuple(thresholds)
        changes: list[CountChange] = []
        dirty, self.dirty = self.dirty, set()
        uncertain = self.uncertain
        emitted = self.emitted
        families = self.families
        for key in dirty:
            fam = families.get(key)
            if fam is None:
                continue
            ekeys = self._emitted_keys(key, fam, thresholds)
            i = 0
            for segment_type, idx in (("growth", fam.growth), ("base", fam.base),
                                      ("discovery", fam.discovery)):
                for m in thresholds:
                    ek = ekeys[i]
                    i += 1
                    count = idx.count_at_least(m)
                    previous = emitted.get(ek, 0)
                    if count == previous:
                        if ek not in uncertain:
                            continue
                        previous = uncertain[ek]
                    count, mean = idx.stats_at_least(m)
                    changes.append(CountChange(key[0], segment_type, key[1], key[2], key[3],
                                               fam.name, m, count, previous, mean, ek))
        return changes

    def commit_change(self, change: CountChange) -> None:
        """``change`` is published: it is the last emitted count of its segment and threshold,
        to be recorded as published (``take_confirmations``)."""
        key = change.emitted_key
        self.emitted[key] = change.user_count
        self.uncertain.pop(key, None)
        self.unconfirmed[key] = change.user_count

    def take_confirmations(self) -> dict[bytes, int]:
        """Published changes not yet recorded as published: emitted key -> count. The caller
        records them (or gives them back with ``unconfirmed.update`` if that fails)."""
        taken, self.unconfirmed = self.unconfirmed, {}
        return taken

    def records(self) -> Iterator[tuple[FamilyKey, str, Record]]:
        for key, fam in self.families.items():
            for user, rec in fam.records():
                yield key, user, rec

    def recommendations(self) -> int:
        return sum(len(fam) for fam in self.families.values())
