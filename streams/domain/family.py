"""A segment family: every user's latest recommendation for one (program, basis, basis_id,
action_type), and the growth, base and discovery counts and strengths derived from them."""

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
#
# Most families are tiny (an asset recommended to a few users), so their fixed cost is what
# counts: a family of at most TINY_MAX slots keeps its users in a list (the slot is the
# position) and no threshold index (a query scans its columns); a larger one maps users to
# slots in a dict and keeps a base and a discovery index (growth is their union).
TINY_MAX = 8
_WITHDRAWN = float("nan")
# orders[0], orders[1]: the (ts, offset) of the event the name comes from; slot i's order is at
# 2 * i + 2, 2 * i + 3. (INT64_MIN, -1) is before every event (offsets are >= 0).
_NO_NAME_ORDER = (INT64_MIN, -1)
# The order of a slot whose recommendation was forgotten (a changelog tombstone read back): no
# event has a negative offset, so it holds no state; ``sweep`` removes it.
_FORGOTTEN_OFFSET = -1


class Family:
    """All segments of one (program, basis, basis_id, action_type): the latest state of each
    user's recommendation, the name, and (beyond TINY_MAX slots) the threshold indexes."""

    __slots__ = ("hist", "indexes", "key", "name", "orders", "slots", "version", "weights")

    def __init__(self, key: FamilyKey = ("", "", "", ""),
                 version: list[int] | None = None) -> None:
        self.key = key  # the one FamilyKey object the store, its queues and the ledger share
        # Tiny: the users in slot order; else user -> slot.
        self.slots: list[str] | dict[str, int] = []
        self.weights = array("d")
        self.orders = array("q", _NO_NAME_ORDER)
        self.hist = bytearray()
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
        return len(self._selected(segment_type, m))

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
            return len(selected), sum(selected, 0.0) / len(selected)
        if segment_type != "growth":
            return indexes[segment_type != "base"].stats_at_least(m)
        count, total = indexes[0].totals_at_least(m)
        count2, total2 = indexes[1].totals_at_least(m)
        count += count2
        return (count, (total + total2) / count) if count else (0, 0.0)

    def _selected(self, segment_type: str, m: float) -> list[float]:
        """A scan of the columns: the weights >= ``m`` of the segment's members (NaN, a
        withdrawal, is never >= ``m``)."""
        if segment_type == "growth":
            return [w for w in self.weights if w >= m]
        if segment_type == "base":
            return [w for w, h in zip(self.weights, self.hist, strict=True) if h and w >= m]
        return [w for w, h in zip(self.weights, self.hist, strict=True) if not h and w >= m]

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
        w = self.weights[slot]
        return w == w or self.orders[2 * slot + 2] >= watermark

    def _held(self, slot: int) -> bool:
        return self.orders[2 * slot + 3] != _FORGOTTEN_OFFSET

    def _record(self, slot: int) -> StoredRecommendation:
        w = self.weights[slot]
        return StoredRecommendation(None if w != w else w, bool(self.hist[slot]),
                                    self.orders[2 * slot + 2], self.orders[2 * slot + 3])

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
        if slot is None:
            self._append(user_id, weight, in_history, ts, offset)
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
        old = self.weights[slot]
        old_hist = self.hist[slot]
        if old == old:  # not withdrawn
            if old == weight and old_hist == in_history:
                return False
        elif weight is None:
            return False
        self.weights[slot] = _WITHDRAWN if weight is None else weight
        self.hist[slot] = in_history
        indexes = self.indexes
        if indexes is not None:
            if old == old:
                indexes[not old_hist].remove(old)
            if weight is not None:
                indexes[not in_history].add(weight)
        return True

    def load(self, user_id: str, weight: float | None, in_history: bool, ts: int, offset: int,
             name: str) -> bool:
        """Rebuild path: ``put`` without the indexes (``build_indexes`` makes them once all
        records are in). True if stored."""
        slot = self._slot(user_id)
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
        # Interned: a user appears in many segments; they then share one string. Not for a
        # withdrawal, often of a made-up user that ages out: churning the interpreter's intern
        # table with short-lived strings leaves it twice its size (BENCHMARKS.md, memory).
        user = user_id if weight is None else sys.intern(user_id)
        slots = self.slots
        slot = len(self.weights)
        if isinstance(slots, dict):
            slots[user] = slot
        elif slot < TINY_MAX:
            slots.append(user)
        else:
            self.slots = {u: s for s, u in enumerate(slots)}
            self.slots[user] = slot
        self.weights.append(_WITHDRAWN if weight is None else weight)
        self.orders.append(ts)
        self.orders.append(offset)
        self.hist.append(in_history)

    def _advance(self, slot: int, ts: int, offset: int) -> bool:
        """Move the slot's order to (ts, offset) if that is more recent; False if not."""
        orders = self.orders
        o = 2 * slot + 2
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
        slot = self._slot(user_id)
        if slot is None:
            return False
        w = self.weights[slot]
        indexes = self.indexes
        if indexed and indexes is not None and w == w:
            indexes[not self.hist[slot]].remove(w)
        self.weights[slot] = _WITHDRAWN
        self.orders[2 * slot + 2] = INT64_MIN
        self.orders[2 * slot + 3] = _FORGOTTEN_OFFSET
        return True

    def sweep(self, before: int) -> tuple[list[str], int | None]:
        """Free the slots of withdrawals older than ``before`` (and of forgotten ones), in one
        pass that renumbers the others. Returns the users whose withdrawals were forgotten
        (not those forgotten before) and the oldest withdrawal kept (None if none is; the
        withdrawal the name comes from is kept while the family has members, uncounted)."""
        weights, orders, hist = self.weights, self.orders, self.hist
        gone: list[str] = []
        oldest: int | None = None
        kept_weights, kept_orders, kept_hist = array("d"), array("q", orders[:2]), bytearray()
        kept: list[str] = []
        namer: tuple[str, int] | None = None  # the forgotten withdrawal the name comes from
        live = False
        for user, slot in self._pairs():
            w = weights[slot]
            if w != w:  # withdrawn
                ts, offset = orders[2 * slot + 2], orders[2 * slot + 3]
                if offset == _FORGOTTEN_OFFSET:
                    continue
                if ts < before:
                    if ts == orders[0] and offset == orders[1]:
                        namer = user, slot
                    else:
                        gone.append(user)
                    continue
                if oldest is None or ts < oldest:
                    oldest = ts
            else:
                live = True
            kept.append(user)
            kept_weights.append(w)
            kept_orders.append(orders[2 * slot + 2])
            kept_orders.append(orders[2 * slot + 3])
            kept_hist.append(hist[slot])
        if namer is not None:
            user, slot = namer
            if live:
                # The family's name comes from this withdrawal: its record stays (not
                # tombstoned), so that a rebuild from the changelog names the family as this
                # state does. One per family; freed once a newer event names it.
                kept.append(user)
                kept_weights.append(_WITHDRAWN)
                kept_orders.append(orders[0])
                kept_orders.append(orders[1])
                kept_hist.append(hist[slot])
            else:
                gone.append(user)
        if len(kept) != len(self.slots):
            self.weights, self.orders, self.hist = kept_weights, kept_orders, kept_hist
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
        for w, h in zip(self.weights, self.hist, strict=True):
            if w == w:  # not withdrawn
                (base if h else discovery).append(w)
        self.indexes = ThresholdIndex.of(base), ThresholdIndex.of(discovery)

    def _rename(self, ts: int, offset: int, name: str) -> None:
        orders = self.orders
        if ts > orders[0] or (ts == orders[0] and offset > orders[1]):
            orders[0] = ts
            orders[1] = offset
            self.name = name

    def records(self) -> Iterator[tuple[str, StoredRecommendation]]:
        for user, slot in self._pairs():
            if self._held(slot):
                yield user, self._record(slot)
