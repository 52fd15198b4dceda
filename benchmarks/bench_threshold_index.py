"""Micro-benchmark: ThresholdIndex vs a flat sorted list (``insort`` + ``fsum`` of a slice).

Run: ``python benchmarks/bench_threshold_index.py [--load N] [--sizes 100,10000,1000000]``

Prints ops/s for each operation and the ratio index / baseline.  Operations:

* ``add``     -- add a random weight (chunks of adds alternate with chunks of removes)
* ``remove``  -- remove a present weight (the ones just added)
* ``update``  -- remove one weight + add another (the per-event stream hot path)
* ``query``   -- ``stats_at_least(m)`` at a random threshold, no updates in between
* ``upd+qry`` -- one update followed by one query (worst case for lazy maintenance)

Not a test: numbers depend on the machine; it stays well under a minute.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from bisect import bisect_left, insort
from collections.abc import Callable
from math import fsum
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.domain.threshold_index import DEFAULT_LOAD, ThresholdIndex

BUDGET_S = 0.15  # per measurement (rough upper bound on time spent per cell and repeat)
K_OPS = 100_000  # max operations per measurement


class SortedListBaseline:
    """The naive alternative: one flat sorted list, fsum of the tail at query time."""

    __slots__ = ("items",)

    def __init__(self, items: list[float]) -> None:
        self.items = sorted(items)

    def add(self, w: float) -> None:
        insort(self.items, w)

    def remove(self, w: float) -> None:
        items = self.items
        j = bisect_left(items, w)
        if j == len(items) or items[j] != w:
            raise KeyError(w)
        del items[j]

    def stats_at_least(self, m: float) -> tuple[int, float]:
        items = self.items
        j = bisect_left(items, m)
        c = len(items) - j
        return (c, fsum(items[j:]) / c) if c else (0, 0.0)


Structure = ThresholdIndex | SortedListBaseline


def _rate(step: Callable[[int], object], start_k: int, max_ops: int) -> tuple[int, float]:
    """Run ``step(k)`` for k = start_k, ... until ``max_ops`` calls or the time budget.

    Returns (ops done, ops/s).
    """
    done = 0
    batch = 1
    start = time.perf_counter()
    elapsed = 0.0
    while done < max_ops and elapsed < BUDGET_S:
        end = min(max_ops, done + batch)
        for k in range(start_k + done, start_k + end):
            step(k)
        done = end
        batch *= 2
        elapsed = time.perf_counter() - start
    return done, (done / elapsed if elapsed else float("inf"))


class _Runner:
    """One structure, the weights currently in it, and a cursor into shared random inputs."""

    def __init__(self, struct: Structure, present: list[float], fresh: list[float]) -> None:
        self.struct = struct
        self.pool = present[:]  # weights currently in ``struct`` (updates swap through it)
        self.fresh = fresh
        self.cursor = 0  # next unused index into ``fresh`` / thresholds

    def _next(self, count: int) -> int:
        start = self.cursor
        self.cursor = (start + count) % (len(self.fresh) - count)
        return start

    def measure(self, ms: list[float]) -> dict[str, float]:
        struct, fresh, pool = self.struct, self.fresh, self.pool
        out: dict[str, float] = {}

        # add / remove: alternate timed chunks of adds and removes of the same fresh weights
        # so the size stays within [n, 1.25 n] (a growing structure measures something else).
        chunk = max(8, min(len(pool) // 4, 4096))
        t_add = t_remove = 0.0
        done = 0
        while done < K_OPS and t_add + t_remove < 2 * BUDGET_S:
            start = self._next(chunk)
            batch = fresh[start : start + chunk]
            t0 = time.perf_counter()
            for w in batch:
                struct.add(w)
            t1 = time.perf_counter()
            for w in batch:
                struct.remove(w)
            t2 = time.perf_counter()
            t_add += t1 - t0
            t_remove += t2 - t1
            done += chunk
        out["add"] = done / t_add
        out["remove"] = done / t_remove

        def update(k: int) -> None:
            i = k % len(pool)
            struct.remove(pool[i])
            pool[i] = fresh[k]
            struct.add(pool[i])

        _, out["update"] = _rate(update, self._next(K_OPS), K_OPS)

        def query(k: int) -> None:
            struct.stats_at_least(ms[k])

        struct.stats_at_least(0.5)  # let the lazy index catch up before pure queries
        _, out["query"] = _rate(query, self._next(K_OPS), K_OPS)

        def upd_qry(k: int) -> None:
            update(k)
            struct.stats_at_least(ms[k])

        _, out["upd+qry"] = _rate(upd_qry, self._next(K_OPS), K_OPS)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, default=DEFAULT_LOAD)
    parser.add_argument("--sizes", default="100,10000,1000000")
    parser.add_argument("--repeats", type=int, default=3, help="best of N (noisy machines)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"python {sys.version.split()[0]}, load={args.load}, "
        f"best of {args.repeats} x ~{BUDGET_S}s per cell"
    )
    header = f"{'n':>9} {'op':>8} {'index ops/s':>13} {'baseline ops/s':>15} {'ratio':>8}"
    print(header)
    print("-" * len(header))
    rng = random.Random(2024)
    fresh = [rng.random() for _ in range(4 * K_OPS)]
    ms = [rng.random() for _ in range(4 * K_OPS)]
    for n in sizes:
        present = [rng.random() for _ in range(n)]
        t0 = time.perf_counter()
        index = ThresholdIndex(load=args.load)
        for w in present:
            index.add(w)
        build = time.perf_counter() - t0
        runners = {
            "index": _Runner(index, present, fresh),
            "baseline": _Runner(SortedListBaseline(present), present, fresh),
        }
        best: dict[str, dict[str, float]] = {"index": {}, "baseline": {}}
        for _ in range(args.repeats):
            for name, runner in runners.items():  # interleaved, so noise hits both alike
                for op, rate in runner.measure(ms).items():
                    best[name][op] = max(rate, best[name].get(op, 0.0))
        for op, r_i in best["index"].items():
            r_b = best["baseline"][op]
            print(f"{n:>9} {op:>8} {r_i:>13,.0f} {r_b:>15,.0f} {r_i / r_b:>7.2f}x")
        print(f"{n:>9} {'build':>8} {n / build:>13,.0f}   (index adds/s while growing 0 -> n)")
        print()


if __name__ == "__main__":
    main()
