"""Bytes per recommendation held by one partition's FamilyStore and ChangeLedger, in-process.

Two shapes, each applied as the worker applies them (records parsed, applied, one change
ledger tick published): ``long-tail`` (families of 2 to 5 users, ``segments bench``'s phase
5b) and ``usual`` (about 100 users per family, the API program of phase 4). Prints, per
recommendation, the bytes tracemalloc traces while building the state and a breakdown by
object kind (``sys.getsizeof`` of every object reachable from the state, each counted once,
GC headers included; allocator rounding excluded). Optionally the aggregation's events/s.

    python benchmarks/bench_family_memory.py [--recs 200000] [--shape long-tail|usual|both]
                                             [--speed]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from array import array
from collections import Counter
from typing import Any

from streams.codec.input import parse_event
from streams.domain.ledger import ChangeLedger
from streams.domain.store import FamilyStore
from streams.domain.threshold_index import ThresholdIndex
from streams.tools.bench import api_records, long_tail_records
from streams.tools.produce import Record


def records(shape: str, recs: int) -> list[Record]:
    if shape == "long-tail":
        return list(long_tail_records(recs, seed=7))
    return list(api_records("api", max(1, recs // 100), recs, seed=5))


def build(recs: list[Record]) -> tuple[FamilyStore, ChangeLedger]:
    store = FamilyStore()
    ledger = ChangeLedger(0, (0.5,))
    for offset, r in enumerate(recs):
        ev = parse_event(r.value, r.timestamp_ms)
        store.apply(ev, offset, ev.family)
    publication = ledger.take(store)
    if publication is not None:
        ledger.published(publication)
        ledger.take_confirmations()
    return store, ledger


class Walker:
    """Sizes of the objects reachable from the state, by kind; each object counted once."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.by_kind: Counter[str] = Counter()

    def add(self, kind: str, obj: object) -> bool:
        if id(obj) in self.seen:
            return False
        self.seen.add(id(obj))
        self.by_kind[kind] += sys.getsizeof(obj)
        return True

    def deep(self, kind: str, obj: object) -> None:
        """``obj`` and what it holds (tuples, lists, dicts, sets), all as ``kind``."""
        if not self.add(kind, obj):
            return
        if isinstance(obj, (tuple, list, set, frozenset)):
            for x in obj:
                self.deep(kind, x)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                self.deep(kind, k)
                self.deep(kind, v)

    def family_key(self, key: Any) -> None:
        if self.add("FamilyKey tuples", key):
            for part in key:
                self.add("FamilyKey strings", part)

    def index(self, idx: ThresholdIndex) -> None:
        self.add("ThresholdIndex objects", idx)
        items = idx._items
        self.add("index lists/arrays", items)
        if isinstance(items, list):
            for w in items:
                self.add("index floats", w)
        big = idx._big
        if big is not None:
            self.deep("index big-mode blocks", big.__dict__ if hasattr(big, "__dict__") else [
                getattr(big, s) for s in big.__slots__])

    def family(self, fam: Any) -> None:
        self.add("Family objects", fam)
        for slot in type(fam).__slots__:
            value = getattr(fam, slot, None)
            if value is None or isinstance(value, (int, float)):
                continue
            if isinstance(value, ThresholdIndex):
                self.index(value)
            elif slot == "slots":
                self.add("slots (dicts or lists)", value)
                for user in value:
                    self.add("user id strings", user)
            elif isinstance(value, (array, bytearray)):
                self.add(f"{slot} arrays", value)
            elif slot == "version":
                self.deep("version lists", value)
            elif slot == "name":
                self.add("names", value)
            elif slot == "key":
                self.family_key(value)
            elif isinstance(value, tuple) and value and isinstance(value[0], ThresholdIndex):
                self.add("ThresholdIndex tuples", value)
                for idx in value:
                    self.index(idx)
            else:
                self.deep(slot, value)

    def store(self, store: FamilyStore) -> None:
        self.add("store dicts", store.families)
        for key, fam in store.families.items():
            self.family_key(key)
            self.family(fam)
        self.add("store dicts", store.by_program)
        for program, bases in store.by_program.items():
            self.add("FamilyKey strings", program)
            self.add("store dicts", bases)
            for basis, families in bases.items():
                self.add("FamilyKey strings", basis)
                self.add("store dicts", families)
                for key in families:
                    self.family_key(key)
        self.deep("store dicts", store.versions)
        self.deep("store dicts", store._expiring)
        self.deep("store dicts", store._expiry)

    def ledger(self, ledger: ChangeLedger) -> None:
        for d in (ledger.emitted, ledger.uncertain, ledger.unconfirmed):
            self.add("ledger dicts", d)
            for key, count in d.items():
                if len(key) == 4:  # a family: its counts at the watched segments
                    self.family_key(key)
                elif self.add("ledger SegmentKey tuples", key):
                    self.family_key(key[0])
                    self.add("ledger SegmentKey tuples", key[1])
                    self.add("ledger SegmentKey tuples", key[2])
                self.deep("ledger counts", count)


def measure(shape: str, n: int) -> None:
    recs = records(shape, n)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    store, ledger = build(recs)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    held = store.recommendations()
    walker = Walker()
    walker.store(store)
    walker.ledger(ledger)
    total = sum(walker.by_kind.values())
    print(f"{shape}: {held:,} recommendations in {len(store.families):,} families "
          f"({held / len(store.families):.1f} per family)")
    print(f"  traced by tracemalloc: {traced / held:7.1f} B per recommendation")
    print(f"  reachable (getsizeof): {total / held:7.1f} B per recommendation "
          f"({total / len(store.families):.0f} B per family)")
    for kind, size in walker.by_kind.most_common():
        print(f"    {kind:28} {size / held:7.1f}")


def speed(shape: str, n: int, repeats: int = 3) -> None:
    recs = records(shape, n)
    best = 0.0
    for _ in range(repeats):
        store = FamilyStore()
        started = time.perf_counter()
        for offset, r in enumerate(recs):
            ev = parse_event(r.value, r.timestamp_ms)
            store.apply(ev, offset, ev.family)
        best = max(best, len(recs) / (time.perf_counter() - started))
    print(f"{shape}: parse + apply {best:,.0f} events/s (best of {repeats})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recs", type=int, default=200_000)
    parser.add_argument("--shape", choices=("long-tail", "usual", "both"), default="both")
    parser.add_argument("--speed", action="store_true", help="also time parse + apply")
    args = parser.parse_args()
    shapes = ("long-tail", "usual") if args.shape == "both" else (args.shape,)
    for shape in shapes:
        measure(shape, args.recs)
        if args.speed:
            speed(shape, args.recs)


if __name__ == "__main__":
    main()
