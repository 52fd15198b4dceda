"""A segment family: every user's latest recommendation for one (program, basis, basis_id,
action_type), and the growth, base and discovery counts and strengths derived from them."""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator
from typing import NamedTuple

from streams.domain.events import INT64_MAX, INT64_MIN, FamilyKey, SegmentType
from streams.domain.threshold_index import ThresholdIndex, within

# (family, segment_type, threshold): one segment at one watched threshold.
SegmentKey = tuple[FamilyKey, SegmentType, float]


class StoredRecommendation(NamedTuple):
    """The state of one recommendation: its latest event (greatest (ts, offset))."""

    weight: float | None
    in_history: bool
    ts: int
    offset: int


# How a Family holds its recommendations: in one column of signed 64-bit ints, three per slot
# (a user's position): the order (ts, offset) of its latest event, then its weight's IEEE-754
# bits with in_history in the sign bit (weights are >= 0, so that bit is free; NaN: withdrawn).
# Kafka's timestamps and offsets are signed 64-bit ints, and so are the events' ts (validated).
# One array object per family and no small objects per recommendation: most families are tiny
# (an asset recommended to a few users), so their fixed cost, in objects, is what counts.
#
# A family of at most TINY_MAX slots keeps its users in a list (the slot is the position) and
# no threshold index (a query scans its column); a larger one maps users to slots in a dict
# and keeps a base and a discovery index (growth is their union).
TINY_MAX = 8
# cols[0], cols[1]: the (ts, offset) of the event the name comes from; slot i is at
# _HEAD + _WIDTH * i: ts, offset, weight. (INT64_MIN, -1) is before every event (offsets >= 0).
_NO_NAME_ORDER = (INT64_MIN, -1)
_HEAD = 2
_WIDTH = 3
# The order of a slot whose recommendation was forgotten (a changelog tombstone read back): no
# event has a negative offset, so it holds no state; ``sweep`` removes it.
_FORGOTTEN_OFFSET = -1
_INT64 = struct.Struct("=q")
_DOUBLE = struct.Struct("=d")
_HIST = INT64_MIN  # the sign bit: in_history
_BITS = INT64_MAX  # the weight's bits
_WITHDRAWN: int = _INT64.unpack(_DOUBLE.pack(float("nan")))[0]


def _bits(x: float) -> int:
    """The IEEE-754 bits of ``x`` as a signed 64-bit int."""
    bits: int = _INT64.unpack(_DOUBLE.pack(x))[0]
    return bits


_ONE = _bits(1.0)


def _encode(weight: float | None, in_history: bool) -> int:
    """A slot's weight column value. ``+ 0.0`` makes -0.0 (a valid weight, equal to 0.0)
    0.0, whose sign bit is free for in_history."""
    bits = _WITHDRAWN if weight is None else _bits(weight + 0.0)
    return bits | _HIST if in_history else bits


def _weight(value: int) -> float:
    """The weight of a slot's column value (NaN: withdrawn)."""
    w: float = _DOUBLE.unpack(_INT64.pack(value & _BITS))[0]
    return w


class Family:
    """All segments of one (program, basis, basis_id, action_type): the latest state of each
    user's recommendation, the name, and (beyond TINY_MAX slots) the threshold indexes."""

    __slots__ = ("cols", "indexes", "key", "name", "slots", "version")

    def __init__(self, key: FamilyKey = ("", "", "", ""),
                 version: list[int] | None = None) -> None:
        self.key = key  # the one FamilyKey object the store, its queues and the ledger share
        # Tiny: the users in slot order; else user -> slot.
        self.slots: list[str] | dict[str, int] = []
        self.cols = array("q", _NO_NAME_ORDER)
        # (base, discovery) of a family that is not tiny, once built (None while rebuilding).
        self.indexes: tuple[ThresholdIndex, ThresholdIndex] | None = None
        self.name = ""
        # Changes applied to the families of this program and basis (a counter they share,
        # bumped by their owner: FamilyStore.apply), the query memo's validity.
        self.version = [0] if version is None else version

    def __len__(self) -> int:
        """Recommendations held (withdrawn ones included: their order still counts)."""
        return len(self.slots)

    def _slot(self, user_id: str) -> int | None:
        slots = self.slots
        if isinstance(slots, dict):
            return slots.get(user_id)
        return slots.index(user_id) if user_id in slots else None

    def _pairs(self) -> Iterator[tuple[str, int]]:
        """(user, slot) in slot order."""
        slots = self.slots
        if isinstance(slots, dict):
            return iter(slots.items())
        return zip(slots, range(len(slots)), strict=True)

    def count_at_least(self, segment_type: str, m: float) -> int:
        """Exact number of the segment's members with a weight >= ``m``."""
        indexes = self.indexes
        if indexes is not None:
            if segment_type == "growth":
                return indexes[0].count_at_least(m) + indexes[1].count_at_least(m)
            return indexes[segment_type != "base"].count_at_least(m)
        # A scan of the weights' bits: for doubles >= 0 their order is the ints' order, and
        # NaN's (a withdrawal) are above 1.0's.
        if not m <= 1.0:
            return 0
        low = 0 if m <= 0.0 else _bits(m)
        n = 0
        growth = segment_type == "growth"
        base = segment_type == "base"
        for value in self.cols[_HEAD + 2::_WIDTH]:
            if low <= value & _BITS <= _ONE and (growth or (value < 0) == base):
                n += 1
        return n

    def members(self, segment_type: str) -> tuple[int, float]:
        """``(members, greatest weight)`` of the segment (``(0, 0.0)`` if none): a bound of
        its count at any threshold, and the greatest threshold at which it is listed."""
        indexes = self.indexes
        if indexes is not None:
            if segment_type == "growth":
                a, b = indexes
                top_a, top_b = a.greatest(), b.greatest()
                if top_a is None:
                    return (len(b), top_b) if top_b is not None else (0, 0.0)
                return len(a) + len(b), top_a if top_b is None or top_a > top_b else top_b
            index = indexes[segment_type != "base"]
            top = index.greatest()
            return (0, 0.0) if top is None else (len(index), top)
        # A scan of the weights' bits, as in count_at_least: the greatest bits are the
        # greatest weight's; only that one is made a float.
        members = 0
        top = -1
        growth = segment_type == "growth"
        base = segment_type == "base"
        for value in self.cols[_HEAD + 2::_WIDTH]:
            bits = value & _BITS
            if bits <= _ONE and (growth or (value < 0) == base):
                members += 1
                if bits > top:
                    top = bits
        return (members, _weight(top)) if members else (0, 0.0)

    def stats_at_least(self, segment_type: str, m: float) -> tuple[int, float]:
        """``(count, mean weight)`` of the segment's members with a weight >= ``m``; ``(0,
        0.0)`` if none. The mean is within threshold_index.py's bound, plus one rounding for
        growth (the base and discovery sums added): ``(K + 3) u`` relative."""
        indexes = self.indexes
        if indexes is None:
            selected = self._selected(segment_type, m)
            if not selected:
                return 0, 0.0
            selected.sort()  # summed in ascending order, as a small index sums
            return len(selected), within(sum(selected, 0.0) / len(selected), selected[0],
                                         selected[-1])
        if segment_type != "growth":
            return indexes[segment_type != "base"].stats_at_least(m)
        count, total = indexes[0].totals_at_least(m)
        count2, total2 = indexes[1].totals_at_least(m)
        if not count + count2:
            return 0, 0.0
        spans = [index.span_at_least(m) for index, n in zip(indexes, (count, count2),
                                                            strict=True) if n]
        return count + count2, within((total + total2) / (count + count2),
                                      min(lo for lo, _ in spans), max(hi for _, hi in spans))

    def _columns(self) -> tuple[array[float], array[int]]:
        """Every slot's weight (NaN: withdrawn) and its column value (negative: in_history),
        in slot order."""
        cols = self.cols
        # The column read as doubles: a weight's bits with the sign bit of in_history are the
        # weight, negated if in history (-0.0 for 0.0); abs undoes it.
        signed = array("d", cols.tobytes())[_HEAD + 2::_WIDTH]
        return array("d", map(abs, signed)), cols[_HEAD + 2::_WIDTH]

    def _selected(self, segment_type: str, m: float) -> list[float]:
        """A scan of the column: the weights >= ``m`` of the segment's members, selected by
        their bits as in ``count_at_least``; only those are made floats."""
        if not m <= 1.0:
            return []
        low = 0 if m <= 0.0 else _bits(m)
        growth = segment_type == "growth"
        base = segment_type == "base"
        return [_weight(value) for value in self.cols[_HEAD + 2::_WIDTH]
                if low <= value & _BITS <= _ONE and (growth or (value < 0) == base)]

    def get(self, user_id: str) -> StoredRecommendation | None:
        slot = self._slot(user_id)
        return None if slot is None or not self._held(slot) else self._record(slot)

    def holds(self, user_id: str, watermark: int) -> bool:
        """Whether the user's recommendation has state here: a weight, or a withdrawal not
        older than ``watermark`` (an older one is forgotten, whether or not ``sweep`` has freed
        its slot yet: what counts never depends on when sweeps run)."""
        slot = self._slot(user_id)
        if slot is None or not self._held(slot):
            return False
        o = _HEAD + _WIDTH * slot
        cols = self.cols
        return cols[o + 2] & _BITS != _WITHDRAWN or cols[o] >= watermark

    def _held(self, slot: int) -> bool:
        return self.cols[_HEAD + _WIDTH * slot + 1] != _FORGOTTEN_OFFSET

    def _record(self, slot: int) -> StoredRecommendation:
        o = _HEAD + _WIDTH * slot
        cols = self.cols
        value = cols[o + 2]
        w = _weight(value)
        return StoredRecommendation(None if w != w else w, value < 0, cols[o], cols[o + 1])

    def put(self, user_id: str, weight: float | None, in_history: bool, ts: int, offset: int,
            name: str) -> bool | None:
        """Last-writer-wins: store the event at (ts, offset) unless the stored one is as
        recent. None: not stored; True: stored and the user's membership or weight changed;
        False: stored, only its order (and maybe the name) moved.

        A withdrawal is stored like any other event, held or not (contract §2): an older event
        of the same recommendation arriving after it must stay older. A weight outside
        [0, 1] raises ValueError and stores nothing."""
        if weight is not None and not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight!r}")
        slot = self._slot(user_id)
        value = _encode(weight, in_history)
        if slot is None:
            self._append(user_id, value, ts, offset)
            self._rename(ts, offset, name)
            indexes = self.indexes
            if indexes is None:
                if isinstance(self.slots, dict):  # no longer tiny
                    self.build_indexes()
            elif weight is not None:
                indexes[not in_history].add(weight)
            return weight is not None
        if not self._advance(slot, ts, offset):
            return None
        self._rename(ts, offset, name)
        o = _HEAD + _WIDTH * slot + 2
        cols = self.cols
        old = cols[o]
        if old == value:
            return False
        old_withdrawn = old & _BITS == _WITHDRAWN
        if old_withdrawn and weight is None:
            return False  # (the flag of a withdrawal withdrawn again stays)
        cols[o] = value
        indexes = self.indexes
        if indexes is not None:
            if not old_withdrawn:
                indexes[old >= 0].remove(_weight(old))
            if weight is not None:
                indexes[not in_history].add(weight)
        return True

    def load(self, user_id: str, weight: float | None, in_history: bool, ts: int, offset: int,
             name: str) -> bool:
        """Rebuild path: ``put`` without the indexes (``build_indexes`` makes them once all
        records are in). True if stored."""
        slot = self._slot(user_id)
        value = _encode(weight, in_history)
        if slot is None:
            self._append(user_id, value, ts, offset)
        elif self._advance(slot, ts, offset):
            self.cols[_HEAD + _WIDTH * slot + 2] = value
        else:
            return False
        self._rename(ts, offset, name)
        return True

    def _append(self, user_id: str, value: int, ts: int, offset: int) -> None:
        """A new user's slot."""
        # Interned: a user appears in many segments; they then share one string. Not for a
        # withdrawal, often of a made-up user that ages out: churning the interpreter's intern
        # table with short-lived strings leaves it twice its size (BENCHMARKS.md, memory).
        user = user_id if value & _BITS == _WITHDRAWN else sys.intern(user_id)
        slots = self.slots
        slot = len(slots)
        if isinstance(slots, dict):
            slots[user] = slot
            cols = self.cols
            cols.append(ts)
            cols.append(offset)
            cols.append(value)
            return
        if slot < TINY_MAX:
            slots.append(user)
        else:
            self.slots = {u: s for s, u in enumerate(slots)}
            self.slots[user] = slot
        # A new array of the exact size (an append would reserve room for a few more slots,
        # which a tiny family mostly never fills).
        self.cols = self.cols + array("q", (ts, offset, value))

    def _advance(self, slot: int, ts: int, offset: int) -> bool:
        """Move the slot's order to (ts, offset) if that is more recent; False if not."""
        cols = self.cols
        o = _HEAD + _WIDTH * slot
        stored_ts = cols[o]
        if ts < stored_ts or (ts == stored_ts and offset <= cols[o + 1]):
            return False
        cols[o] = ts
        cols[o + 1] = offset
        return True

    def forget(self, user_id: str, indexed: bool) -> bool:
        """A tombstone read back from the changelog: the recommendation holds no state any
        more (``sweep`` frees its slot). ``indexed``: the indexes are built and hold it if it
        is live. True if there was a slot to forget."""
        slot = self._slot(user_id)
        if slot is None:
            return False
        o = _HEAD + _WIDTH * slot
        cols = self.cols
        value = cols[o + 2]
        indexes = self.indexes
        if indexed and indexes is not None and value & _BITS != _WITHDRAWN:
            indexes[value >= 0].remove(_weight(value))
        cols[o] = INT64_MIN
        cols[o + 1] = _FORGOTTEN_OFFSET
        cols[o + 2] = _WITHDRAWN | (value & _HIST)
        return True

    def sweep(self, before: int) -> tuple[list[str], int | None]:
        """Free the slots of withdrawals older than ``before`` (and of forgotten ones), in one
        pass that renumbers the others. Returns the users whose withdrawals were forgotten
        (not those forgotten before) and the oldest withdrawal kept (None if none is; the
        withdrawal the name comes from is kept while the family has members, uncounted)."""
        cols = self.cols
        gone: list[str] = []
        oldest: int | None = None
        kept_cols = cols[:_HEAD]
        kept: list[str] = []
        namer: tuple[str, int] | None = None  # the forgotten withdrawal the name comes from
        live = False
        for user, slot in self._pairs():
            o = _HEAD + _WIDTH * slot
            if cols[o + 2] & _BITS == _WITHDRAWN:
                ts, offset = cols[o], cols[o + 1]
                if offset == _FORGOTTEN_OFFSET:
                    continue
                if ts < before:
                    if ts == cols[0] and offset == cols[1]:
                        namer = user, slot
                    else:
                        gone.append(user)
                    continue
                if oldest is None or ts < oldest:
                    oldest = ts
            else:
                live = True
            kept.append(user)
            kept_cols.extend(cols[o:o + _WIDTH])
        if namer is not None:
            user, slot = namer
            if live:
                # The family's name comes from this withdrawal: its record stays (not
                # tombstoned), so that a rebuild from the changelog names the family as this
                # state does. One per family; freed once a newer event names it.
                kept.append(user)
                o = _HEAD + _WIDTH * slot
                kept_cols.extend(cols[o:o + _WIDTH])
            else:
                gone.append(user)
        if len(kept) != len(self.slots):
            self.cols = array("q", kept_cols)  # (exact size)
            # Tiny again at half the bound, so that a family near it does not flip back and
            # forth; only withdrawals went, and they are in no index.
            if isinstance(self.slots, list) or len(kept) <= TINY_MAX // 2:
                self.slots = kept
                self.indexes = None
            else:
                self.slots = {u: s for s, u in enumerate(kept)}
        return gone, oldest

    def build_indexes(self) -> None:
        """The indexes of a family that is not tiny from the stored weights, each in one sort
        (a tiny one has none)."""
        if not isinstance(self.slots, dict):
            self.indexes = None
            return
        base: list[float] = []
        discovery: list[float] = []
        weights, values = self._columns()
        for w, v in zip(weights, values, strict=True):
            if w == w:  # not withdrawn
                (base if v < 0 else discovery).append(w)
        self.indexes = ThresholdIndex.of(base), ThresholdIndex.of(discovery)

    def _rename(self, ts: int, offset: int, name: str) -> None:
        cols = self.cols
        if ts > cols[0] or (ts == cols[0] and offset > cols[1]):
            cols[0] = ts
            cols[1] = offset
            self.name = name

    def records(self) -> Iterator[tuple[str, StoredRecommendation]]:
        for user, slot in self._pairs():
            if self._held(slot):
                yield user, self._record(slot)
