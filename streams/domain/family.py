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
# The order of a slot whose recommendation was forgotten (a changelog tombstone read back): no
# event has a negative offset, so it holds no state; ``sweep`` removes it.
_FORGOTTEN_OFFSET = -1


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
        return None if slot is None or not self._held(slot) else self._record(slot)

    def holds(self, user_id: str, watermark: int) -> bool:
        """Whether the user's recommendation has state here: a weight, or a withdrawal not
        older than ``watermark`` (an older one is forgotten, whether or not ``sweep`` has freed
        its slot yet: what counts never depends on when sweeps run)."""
        slot = self.slots.get(user_id)
        if slot is None or not self._held(slot):
            return False
        w = self.weights[slot]
        return w == w or self.orders[2 * slot] >= watermark

    def _held(self, slot: int) -> bool:
        return self.orders[2 * slot + 1] != _FORGOTTEN_OFFSET

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

    def forget(self, user_id: str, indexed: bool) -> bool:
        """A tombstone read back from the changelog: the recommendation holds no state any
        more (``sweep`` frees its slot). ``indexed``: the indexes are built and hold it if it
        is live. True if there was a slot to forget."""
        slot = self.slots.get(user_id)
        if slot is None:
            return False
        w = self.weights[slot]
        if indexed and w == w:
            self.growth.remove(w)
            (self.base if self.hist[slot] else self.discovery).remove(w)
        self.weights[slot] = _WITHDRAWN
        self.orders[2 * slot] = INT64_MIN
        self.orders[2 * slot + 1] = _FORGOTTEN_OFFSET
        return True

    def sweep(self, before: int) -> tuple[list[str], int | None]:
        """Free the slots of withdrawals older than ``before`` (and of forgotten ones), in one
        pass that renumbers the others. Returns the users whose withdrawals were forgotten
        (not those forgotten before) and the oldest withdrawal kept (None if none is)."""
        weights, orders, hist = self.weights, self.orders, self.hist
        gone: list[str] = []
        oldest: int | None = None
        kept_weights, kept_orders, kept_hist = array("d"), array("q"), bytearray()
        slots: dict[str, int] = {}
        for user, slot in self.slots.items():
            w = weights[slot]
            if w != w:  # withdrawn
                ts, offset = orders[2 * slot], orders[2 * slot + 1]
                if offset == _FORGOTTEN_OFFSET:
                    continue
                if ts < before:
                    gone.append(user)
                    continue
                if oldest is None or ts < oldest:
                    oldest = ts
            slots[user] = len(kept_weights)
            kept_weights.append(w)
            kept_orders.append(orders[2 * slot])
            kept_orders.append(orders[2 * slot + 1])
            kept_hist.append(hist[slot])
        if len(slots) != len(self.slots):
            self.slots, self.weights, self.orders, self.hist = (slots, kept_weights, kept_orders,
                                                                kept_hist)
        return gone, oldest

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
            if self._held(slot):
                yield user, self._record(slot)
