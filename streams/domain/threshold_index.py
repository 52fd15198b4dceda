"""Threshold index: a multiset of weights in [0, 1] answering "how many / how strong >= m".

For every recommendation segment we keep the weights of its members (floats in ``[0, 1]``,
duplicates allowed).  :class:`ThresholdIndex` answers, for any threshold ``m``:

* ``count_at_least(m)`` -- the number of weights ``>= m`` (always exact);
* ``sum_at_least(m)`` / ``stats_at_least(m)`` -- their sum and mean ("strength").

Design
======

The weights live in a *sorted list of sorted blocks* (the layout of
``sortedcontainers.SortedList``), in one of two representations:

Small mode (at most ``SMALL_MAX = 128`` members, i.e. nearly every segment)
    One sorted ``array('d')`` and nothing else (8 bytes a member, against 32 for a list's
    pointer and its float object).  ``add`` is ``bisect.insort``, ``remove`` is
    ``bisect_left`` + ``del``; a query is ``bisect_left`` + the C-level ``sum()`` of the
    selected tail.  An empty index is 144 bytes (object + empty array).

Big mode (promoted beyond 128 members, demoted again at <= 64 in a single block)
    ``blocks``: sorted lists of ``load // 2 .. 2 * load`` weights (split in halves when
    too long, merged with a neighbour when too short); ``maxes``: the last weight of
    each block, bisected to locate a weight or threshold.

    Every block ``b`` has an exact *packed* total ``vals[b] = (fixed(sum b) << 64) + len(b)``
    where ``fixed(x) = x * 2**1074`` is an int: every double is an integer multiple of
    ``2**-1074``, so fixed-point ints represent sums of weights exactly, forever.  An
    update adds/subtracts ``fixed(w) << 64 | 1`` (one ``as_integer_ratio`` and a shift),
    so nothing drifts no matter how many updates happen.  Packing count and sum into one
    int halves the big-int work; a packed total ``P`` gives ``count = P & (2**64 - 1)`` and
    ``sum = P / 2**1138``, which Python's int true division rounds correctly (the count
    bits only nudge the quotient by < ``count * 2**-1138``, i.e. can at most break an
    exact tie).

    Suffix totals over whole blocks come from a Fenwick tree over block positions (ints
    again), maintained lazily because the stream updates much more often than it reads:

    * ``add`` / ``remove`` touch one block list and ``vals[b]``, and mark ``b`` dirty.
    * The first query after updates pushes each dirty block's delta into the tree
      (``O(log #blocks)`` each) or, when there are many, rebuilds it in ``O(#blocks)``.
    * A split or merge shifts block positions; the tree is then rebuilt at the next query
      (amortised: splits/merges need Theta(``load``) updates each, and any number of them
      between two queries share one rebuild).

    A query is two ``bisect_left`` calls, a Fenwick prefix walk, and a float ``sum()``
    over the *smaller* part of the threshold's block (at most ``len(block) / 2 <= load``
    weights): either the tail ``b[j:]`` added to the exact total of the later blocks, or
    the head ``b[:j]`` converted exactly to fixed point and subtracted from the exact
    total from ``b`` on.  Memory: per member a list slot and its float (8 + 24 bytes),
    per block three ~170-byte ints.

LOAD
====

``DEFAULT_LOAD = 256``: the query's partial-block ``sum()`` is <= 256 floats (in a large
index these are cache-cold pointer chases, the dominant query cost), list memmoves stay
tiny, and a million weights make a few thousand blocks, so a Fenwick walk is a dozen steps.
A smaller load answers pure queries faster but rebuilds twice the blocks after each split
when growth interleaves with queries; a larger one answers queries slower.  Small mode stops
at ``SMALL_MAX = 128`` members (or ``2 * load`` if smaller): up to there a plain ``sum()``
beats any bookkeeping.  ``benchmarks/bench_threshold_index.py`` measures it (BENCHMARKS.md).

Error bound
===========

Let ``u = 2**-53``, ``S`` the exact sum of the ``c`` selected weights and
``K = max(load, SMALL_MAX)`` (the longest float summation a query does; ``K = 256`` by
default).  Counts are exact.  Because every summand is non-negative there is no
cancellation (the head trick is safe: the head's sum is at most the tail's, since the
block is sorted and the head is the shorter part), so relative errors just add up:

    |sum_at_least(m) - S| <= (K + 1) u S            (to first order in u)
    |mean - S / c|        <= (K + 2) u (S / c)      ~= 2.9e-14 for K = 256

This bound does not depend on the number or history of updates: the only float
arithmetic is redone from the stored weights at each query; running totals are exact ints.

Subnormals: sums below ``2**-1021`` are computed exactly (multiples of ``2**-1074`` that
need <= 53 bits), so e.g. an index of ``5e-324`` weights returns exactly the correctly
rounded ``S / c``, the same float as ``math.fsum(selected) / c``.  (A *mean* in the
subnormal range is unavoidably rounded to the ``2**-1074`` grid, like any float result.)

Inputs
======

``add`` accepts numbers in ``[0, 1]`` (``ValueError`` otherwise, NaN included) and stores
floats; ``-0.0`` is stored as ``0.0``.  ``remove`` raises ``KeyError`` (index unchanged)
when that exact weight is not present.  Thresholds may be any non-NaN number: ``m <= 0``
selects everything, ``m > 1`` nothing.  Not thread-safe (one owner, like the stream
processor's per-partition state).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, insort

__all__ = [
    "DEFAULT_LOAD",
    "FIXED_SHIFT",
    "SMALL_MAX",
    "ThresholdIndex",
    "strength",
    "to_fixed",
    "within",
]

DEFAULT_LOAD = 256
"""Target block length: big-mode blocks hold ``load // 2 .. 2 * load`` weights."""

SMALL_MAX = 128
"""Small mode (one plain sorted list, no integer bookkeeping) holds at most this many."""

FIXED_SHIFT = 1074
"""Fixed-point scale: a weight ``w`` is the integer ``to_fixed(w) = w * 2**1074`` exactly."""

_COUNT_BITS = 64
_COUNT_MASK = (1 << _COUNT_BITS) - 1
# (fixed_sum << 64 | count) / _PACKED_ONE == fixed_sum / 2**1074, up to a tie-breaking nudge.
_PACKED_ONE = 1 << (FIXED_SHIFT + _COUNT_BITS)
# For x == n / d (d a power of two): n << (_PACK_SHIFT - d.bit_length()) == fixed(x) << 64.
_PACK_SHIFT = FIXED_SHIFT + _COUNT_BITS + 1


def to_fixed(weight: float) -> int:
    """Return ``weight * 2**1074`` as an exact int (exact for every finite float)."""
    n, d = float(weight).as_integer_ratio()
    return n << (FIXED_SHIFT + 1 - d.bit_length())


def strength(total_fixed: int, count: int) -> float:
    """Mean weight of ``count`` weights whose exact sum is ``total_fixed * 2**-1074``.

    Correctly rounded (a single int true division); ``0.0`` when ``count`` is 0.
    """
    if count <= 0:
        return 0.0
    return total_fixed / (count << FIXED_SHIFT)


def within(mean: float, least: float, greatest: float) -> float:
    """``mean`` brought into ``[least, greatest]``, where the exact mean of weights ranging
    over it lies: a rounded sum can put it an ulp outside (above 1.0 for weights all 1.0),
    and this only brings it closer to the exact mean."""
    return least if mean < least else greatest if mean > greatest else mean


def _exact_pack(block: list[float]) -> int:
    """``(exact fixed-point sum << 64) + len``, converting every weight (O(len))."""
    total = len(block)
    for x in block:
        n, d = x.as_integer_ratio()
        total += n << (_PACK_SHIFT - d.bit_length())
    return total


class _Blocks:
    """Big-mode storage: sorted blocks, exact per-block packed sums, lazy Fenwick tree."""

    __slots__ = (
        "applied",
        "blocks",
        "demote",
        "dirty",
        "limit",
        "low",
        "maxes",
        "n",
        "stale",
        "total",
        "tree",
        "vals",
    )

    def __init__(self, blocks: list[list[float]], limit: int, demote: int) -> None:
        self.blocks = blocks
        self.maxes = [b[-1] for b in blocks]
        # vals[i]: exact (fixed_sum << 64) + len of blocks[i], maintained on every update.
        self.vals = [_exact_pack(b) for b in blocks]
        # applied[i]: the value of block i currently represented in ``tree`` / ``total``.
        self.applied: list[int] = []
        self.tree: list[int] = []
        self.total = 0
        self.dirty: set[int] = set()  # blocks whose vals[i] != applied[i]
        self.stale = True  # block positions changed: tree must be rebuilt
        self.n = sum(map(len, blocks))
        self.limit = limit  # split blocks longer than this
        self.low = max(1, limit // 4)  # merge blocks shorter than this
        self.demote = demote  # one block this short: back to small mode

    # -- updates ---------------------------------------------------------------------------

    def add(self, w: float) -> None:
        maxes = self.maxes
        i = bisect_left(maxes, w)
        if i == len(maxes):
            i -= 1
            b = self.blocks[i]
            b.append(w)
            maxes[i] = w
        else:
            b = self.blocks[i]
            insort(b, w)
        n, d = w.as_integer_ratio()
        self.vals[i] += (n << (_PACK_SHIFT - d.bit_length())) + 1
        self.n += 1
        if len(b) > self.limit:
            self._split(i)
        else:
            self.dirty.add(i)

    def remove(self, w: float) -> bool:
        """Remove one ``w``; True when a single short block is left (caller demotes)."""
        maxes = self.maxes
        i = bisect_left(maxes, w)
        if i == len(maxes):
            raise KeyError(w)
        b = self.blocks[i]
        j = bisect_left(b, w)
        if b[j] != w:  # j < len(b) because maxes[i] >= w
            raise KeyError(w)
        del b[j]
        n, d = w.as_integer_ratio()  # == the stored float's (ints / bools have one too)
        self.vals[i] -= (n << (_PACK_SHIFT - d.bit_length())) + 1
        self.n -= 1
        if len(b) < self.low and len(maxes) > 1:
            self._merge(i)
            blocks = self.blocks
            return len(blocks) == 1 and len(blocks[0]) <= self.demote
        if j == len(b) and j:
            maxes[i] = b[-1]
        self.dirty.add(i)
        return len(b) <= self.demote and len(maxes) == 1

    # -- structure -------------------------------------------------------------------------

    def _split(self, i: int) -> None:
        b = self.blocks[i]
        half = len(b) >> 1
        right = b[half:]
        del b[half:]
        self.blocks.insert(i + 1, right)
        self.maxes[i] = b[-1]
        self.maxes.insert(i + 1, right[-1])
        right_val = _exact_pack(right)
        self.vals[i] -= right_val
        self.vals.insert(i + 1, right_val)
        self.stale = True

    def _merge(self, i: int) -> None:
        """Merge short block ``i`` with a neighbour (re-splitting if that is too long)."""
        blocks = self.blocks
        maxes = self.maxes
        vals = self.vals
        self.stale = True
        lo = i if i + 1 < len(blocks) else i - 1
        merged = blocks[lo] + blocks[lo + 1]  # adjacent sorted blocks: concatenation is sorted
        merged_val = vals[lo] + vals[lo + 1]
        del blocks[lo + 1]
        del maxes[lo + 1]
        del vals[lo + 1]
        if len(merged) > self.limit:
            half = len(merged) >> 1
            right = merged[half:]
            del merged[half:]
            right_val = _exact_pack(right)
            blocks[lo] = merged
            blocks.insert(lo + 1, right)
            maxes[lo] = merged[-1]
            maxes.insert(lo + 1, right[-1])
            vals[lo] = merged_val - right_val
            vals.insert(lo + 1, right_val)
            return
        blocks[lo] = merged
        maxes[lo] = merged[-1]
        vals[lo] = merged_val

    def sync(self) -> None:
        """Bring ``tree`` / ``total`` / ``applied`` up to date with ``vals``."""
        vals = self.vals
        dirty = self.dirty
        size = len(vals)
        if self.stale or len(dirty) * size.bit_length() > size:
            applied = vals[:]
            tree = vals[:]
            for i in range(size):
                j = i | (i + 1)
                if j < size:
                    tree[j] += tree[i]
            self.applied = applied
            self.tree = tree
            self.total = sum(applied)
            self.stale = False
        else:
            applied = self.applied
            tree = self.tree
            total = self.total
            for i in dirty:
                v = vals[i]
                delta = v - applied[i]
                applied[i] = v
                total += delta
                while i < size:
                    tree[i] += delta
                    i |= i + 1
            self.total = total
        dirty.clear()

    # -- queries (caller syncs first) ------------------------------------------------------

    def suffix(self, start: int) -> int:
        """Packed sum of blocks ``start:`` (tree must be in sync)."""
        tree = self.tree
        acc = self.total
        i = start - 1
        while i >= 0:
            acc -= tree[i]
            i = (i & (i + 1)) - 1
        return acc

    def count(self, m: float) -> int:
        if self.dirty or self.stale:
            self.sync()
        maxes = self.maxes
        i = bisect_left(maxes, m)
        if i == len(maxes):
            return 0
        b = self.blocks[i]
        return len(b) - bisect_left(b, m) + (self.suffix(i + 1) & _COUNT_MASK)

    def query(self, m: float) -> tuple[int, float]:
        """(count, sum) of the weights ``>= m``."""
        if self.dirty or self.stale:
            self.sync()
        maxes = self.maxes
        i = bisect_left(maxes, m)
        if i == len(maxes):
            return 0, 0.0
        b = self.blocks[i]
        j = bisect_left(b, m)
        if j + j <= len(b):
            # Cheaper side is the prefix b[:j] (all <= the rest): exact total from block i on,
            # minus the float sum of the prefix converted exactly (error analysis in docstring).
            packed = self.suffix(i)
            if j:
                n, d = sum(b[:j], 0.0).as_integer_ratio()
                packed -= (n << (_PACK_SHIFT - d.bit_length())) + j
            return packed & _COUNT_MASK, packed / _PACKED_ONE
        packed = self.suffix(i + 1)
        return len(b) - j + (packed & _COUNT_MASK), sum(b[j:], 0.0) + packed / _PACKED_ONE


class ThresholdIndex:
    """Multiset of weights in ``[0, 1]`` with exact ``>= m`` counts and drift-free sums.

    See the module docstring for the data structure, costs and the error bound.
    """

    __slots__ = ("_big", "_items", "_load", "_small")

    def __init__(self, *, load: int = DEFAULT_LOAD) -> None:
        if load < 1:
            raise ValueError(f"load must be >= 1, got {load}")
        self._items = array("d")  # small mode: all weights, sorted
        self._big: _Blocks | None = None  # big mode (then ``_items`` is unused)
        self._load = load
        self._small = min(SMALL_MAX, 2 * load)  # promote to big mode beyond this many

    @classmethod
    def of(cls, weights: list[float], *, load: int = DEFAULT_LOAD) -> ThresholdIndex:
        """An index holding ``weights`` (same rules as :meth:`add`), built in one sort:
        what a rebuild uses instead of one ``add`` per weight. Takes over the list."""
        index = cls(load=load)
        for k, w in enumerate(weights):
            if not 0.0 <= w <= 1.0:
                raise ValueError(f"weight must be in [0, 1], got {w!r}")
            weights[k] = w + 0.0  # -0.0 -> 0.0, int -> float
        weights.sort()
        if len(weights) > index._small:
            index._promote(weights)
        else:
            index._items = array("d", weights)
        return index

    def __len__(self) -> int:
        big = self._big
        return len(self._items) if big is None else big.n

    def __repr__(self) -> str:
        return f"ThresholdIndex(<{len(self)} weights>)"

    def add(self, weight: float) -> None:
        """Add one weight (finite, in ``[0, 1]``; ``-0.0`` is stored as ``0.0``)."""
        w = weight + 0.0  # -0.0 -> 0.0, int -> float
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight!r}")
        big = self._big
        if big is None:
            items = self._items
            insort(items, w)
            if len(items) > self._small:
                self._promote(items.tolist())
        else:
            big.add(w)

    def _promote(self, items: list[float]) -> None:
        """Big mode from all the weights, sorted."""
        load = self._load
        blocks = [items[k : k + load] for k in range(0, len(items), load)]
        if len(blocks) > 1 and len(blocks[-1]) < load >> 1:
            blocks[-2].extend(blocks.pop())
        self._big = _Blocks(blocks, 2 * load, self._small >> 1)
        self._items = array("d")

    def remove(self, weight: float) -> None:
        """Remove one occurrence of ``weight``; ``KeyError`` (index unchanged) if absent."""
        big = self._big
        if big is None:
            items = self._items
            j = bisect_left(items, weight)
            if j == len(items) or items[j] != weight:
                raise KeyError(weight)
            del items[j]
        elif big.remove(weight):
            self._items = array("d", big.blocks[0])
            self._big = None

    def count_at_least(self, m: float) -> int:
        """Exact number of weights ``>= m``."""
        big = self._big
        if big is None:
            items = self._items
            return len(items) - bisect_left(items, m)
        return big.count(m)

    def sum_at_least(self, m: float) -> float:
        """Sum of the weights ``>= m`` (relative error bound in the module docstring)."""
        big = self._big
        if big is None:
            items = self._items
            j = bisect_left(items, m)
            return sum(items[j:], 0.0) if j else sum(items, 0.0)
        return big.query(m)[1]

    def totals_at_least(self, m: float) -> tuple[int, float]:
        """``(count, sum)`` of the weights ``>= m`` (the sum as ``sum_at_least``'s)."""
        big = self._big
        if big is None:
            items = self._items
            j = bisect_left(items, m)
            return len(items) - j, sum(items[j:], 0.0) if j else sum(items, 0.0)
        return big.query(m)

    def stats_at_least(self, m: float) -> tuple[int, float]:
        """``(count, mean)`` of the weights ``>= m``; ``(0, 0.0)`` if there are none. The mean
        is never outside the least and greatest of those weights (``span_at_least``)."""
        big = self._big
        if big is None:
            items = self._items
            j = bisect_left(items, m)
            count = len(items) - j
            if not count:
                return 0, 0.0
            total = sum(items[j:], 0.0) if j else sum(items, 0.0)
            return count, within(total / count, items[j], items[-1])
        count, total = big.query(m)
        if not count:
            return 0, 0.0
        return count, within(total / count, *self.span_at_least(m))

    def span_at_least(self, m: float) -> tuple[float, float]:
        """The least and the greatest weight ``>= m`` (there must be one)."""
        big = self._big
        if big is None:
            items = self._items
            return items[bisect_left(items, m)], items[-1]
        i = bisect_left(big.maxes, m)
        b = big.blocks[i]
        return b[bisect_left(b, m)], big.maxes[-1]

    def greatest(self) -> float | None:
        """The greatest weight; None when empty."""
        big = self._big
        if big is None:
            items = self._items
            return items[-1] if items else None
        return big.maxes[-1]

    def weights(self) -> list[float]:
        """All weights in ascending order (a copy)."""
        big = self._big
        if big is None:
            return self._items.tolist()
        out: list[float] = []
        for b in big.blocks:
            out.extend(b)
        return out
