"""A segment family: every user's latest recommendation for one (program, basis, basis_id,
action_type), and the growth, base and discovery threshold indexes derived from them."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator
from typing import NamedTuple

from streams.domain.events import INT64_MIN, FamilyKey, SegmentType
from streams.domain.threshold_index import ThresholdIndex

# (family, segment_type, threshold): one segment at one watched threshold.
SegmentKey = tuple[FamilyKey, SegmentType, float]


class StoredRecommendation(NamedTuple):
    """The state of one recommendation: its latest event (greatest (ts, offset))."""

    weight: float | None
    in_history: bool
    ts: int
    offset: int


# How a Family holds its recommendations: in columns. Each user has a slot (a small int: the
# ints up to 256 are shared objects), and per slot the weight in an array of doubles (NaN for a
# withdrawn one), the order (ts, offset) in an array of signed 64-bit ints, and in_history in a
# bytearray: a few tens of bytes per recommendation instead of a tuple, a float and an int
# each, and no small objects for the garbage collector to walk or to pin the allocator's
# arenas. Kafka's
# timestamps and offsets are signed 64-bit ints, and so are the events' ts (validated).
_WITHDRAWN = float("nan")
_NO_ORDER = (INT64_MIN - 1, 0)  # before every event


class Family:
    """All segments of one (program, basis, basis_id, action_type): the latest state of each
    user's recommendation, the three threshold indexes and the name."""

    __slots__ = ("base", "discovery", "growth", "hist", "name", "name_order", "orders",
                 "slots", "version", "watch_keys", "weights")

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
        # bumped by their owner: FamilyStore.apply), the query memo's validity.
        self.version = [0] if version is None else version
        # The change ledger's keys of the family's segments at the watched thresholds, made
        # when it first changes (ChangeLedger).
        self.watch_keys: tuple[SegmentKey, ...] | None = None

    def __len__(self) -> int:
        """Recommendations held (withdrawn ones included: their order still counts)."""
        return len(self.slots)

    def index(self, segment_type: str) -> ThresholdIndex:
        if segment_type == "growth":
            return self.growth
        if segment_type == "base":
            return self.base
        return self.discovery

    def get(self, user_id: str) -> StoredRecommendation | None:
        slot = self.slots.get(user_id)
        return None if slot is None else self._record(slot)

    def _record(self, slot: int) -> StoredRecommendation:
        w = self.weights[slot]
        return StoredRecommendation(None if w != w else w, bool(self.hist[slot]),
                                    self.orders[2 * slot], self.orders[2 * slot + 1])

    def put(self, user_id: str, weight: float | None, in_history: bool, ts: int, offset: int,
            name: str) -> bool | None:
        """Last-writer-wins: store the event at (ts, offset) unless the stored one is as
        recent. None: not stored; True: stored and the user's membership or weight changed;
        False: stored, only its order (and maybe the name) moved.

        A withdrawal is stored like any other event, held or not (contract §2): an older event
        of the same recommendation arriving after it must stay older."""
        slot = self.slots.get(user_id)
        if slot is None:
            self._append(user_id, weight, in_history, ts, offset)
            if weight is None:
                self._rename(ts, offset, name)
                return False
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

    def records(self) -> Iterator[tuple[str, StoredRecommendation]]:
        for user, slot in self.slots.items():
            yield user, self._record(slot)
