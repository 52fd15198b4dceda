"""Micro-benchmark: one worker's part of a force_refresh of phase 9's program (bench_pushdown),
over in-memory stores: where the time goes (the partitions' first rows, their merge, the peer
answer's encoding, its decoding and checks on the asking worker), the old path (every listed
segment counted, then a selection) against the new (FamilyStore.top: a threshold view, or a
ranking of the families by their members, domain/ranking.py), on the same state in one run.

Run: ``python benchmarks/bench_query_topk.py [--segments 100000] [--load 300000]``

The state: phase 9's (``segments`` families of 2 users in one program, over 8 partitions) plus
``load`` events of ``segments produce``'s generator as phase 9's load sends them (1 program,
segments/2 labels, 100 assets, 2000 users). A worker holds 3 of the 8 partitions. Before each
measured query ``--between`` more load events are applied (every memo of the program is
stale, as under load); min_weight is 0.5 (phase 9's) or a new one each time. Not a test:
numbers depend on the machine."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.fanout import parse_answer
from api.params import SegmentsQuery
from streams.codec.input import parse_event
from streams.codec.keys import family_key
from streams.codec.partitioner import partition_for
from streams.domain.events import Event
from streams.domain.rows import SegmentRow, merge_top, top
from streams.domain.store import FamilyStore
from streams.runtime.query import parts_of
from streams.tools.produce import generate

PARTITIONS = 8
OWNED = (0, 1, 2)
_encode = msgspec.json.Encoder().encode


def build(segments: int, load: int) -> tuple[list[FamilyStore], Iterator[tuple[int, Event]]]:
    """The stores, and the rest of the load: (partition, event) without end."""
    stores = [FamilyStore() for _ in range(PARTITIONS)]
    rng = random.Random(9)
    labels = max(1, segments // 2)
    ts = 1_767_225_600_000
    for u in range(2):
        for s in range(segments):
            ev = Event("program-0", f"u{u}", "label", f"l{s % labels}", f"Label {s % labels}",
                       ("view", "purchase")[s // labels % 2], round(rng.random(), 4),
                       rng.random() < 0.4, ts)
            p = partition_for(family_key(ev.family), PARTITIONS)
            stores[p].apply(ev, stores[p].held)
    events = _load(labels, ts + 1000)
    for _ in range(load):
        p, ev = next(events)
        stores[p].apply(ev, 10**12 - 1)
    return stores, events


def _load(labels: int, base_ts: int) -> Iterator[tuple[int, Event]]:
    for rec in generate(10**9, seed=77, programs=1, labels=labels, assets=100, users=2000,
                        base_ts=base_ts):
        if rec.valid:
            ev = parse_event(rec.value, rec.timestamp_ms)
            yield partition_for(family_key(ev.family), PARTITIONS), ev


def old_parts(stores: list[FamilyStore], m: float, limit: int
              ) -> tuple[list[list[SegmentRow]], int]:
    """Before: every listed segment counted, then each partition's first rows selected."""
    parts = [stores[p].query("program-0", "growth", "label", m) for p in OWNED]
    return [top(rows, limit) for rows in parts], sum(map(len, parts))


def new_parts(stores: list[FamilyStore], m: float, limit: int
              ) -> tuple[list[list[SegmentRow]], int]:
    """Now (QueryService.local_top's): each partition's view, or the partitions' rankings
    scanned together."""
    return parts_of([stores[p] for p in OWNED], "program-0", "growth", "label", m, limit)


PARTS = {"old": old_parts, "new": new_parts}


def measure(stores: list[FamilyStore], events: Iterator[tuple[int, Event]], part: str,
            limit: int, fixed: bool, reps: int, between: int) -> dict[str, list[float]]:
    """``reps`` worker parts of a query, ``between`` load events before each (in every
    partition's order: their offsets grow), at min_weight 0.5 (``fixed``) or a new one."""
    fn = PARTS[part]
    stages: dict[str, list[float]] = {}
    rng = random.Random(5)
    for _ in range(reps):
        for _ in range(between):
            p, ev = next(events)
            stores[p].apply(ev, 10**12 + stores[p].held + rng.randrange(10**6))
        m = 0.5 if fixed else round(rng.uniform(0.3, 0.7), 4)
        q = SegmentsQuery("program-0", "growth", "label", m)
        t0 = time.perf_counter()
        parts, total = fn(stores, m, limit)
        t1 = time.perf_counter()
        rows = merge_top(parts, limit)
        t2 = time.perf_counter()
        body = _encode({"items": rows, "partitions": list(OWNED), "lag": 0, "total": total})
        t3 = time.perf_counter()
        parse_answer(body, q, PARTITIONS, None, limit)
        t4 = time.perf_counter()
        for name, dt in (("parts", t1 - t0), ("merge", t2 - t1), ("encode", t3 - t2),
                         ("decode", t4 - t3), ("all", t4 - t0)):
            stages.setdefault(name, []).append(dt * 1000)
    return stages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--segments", type=int, default=100_000)
    parser.add_argument("--load", type=int, default=300_000)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--between", type=int, default=600,
                        help="load events before each query (0.3 s of phase 9's on 3 of 8)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    stores, events = build(args.segments, args.load)
    held = sum(len(s.families) for s in (stores[p] for p in OWNED))
    print(f"state built in {time.perf_counter() - t0:.1f}s: {held} families on the worker's "
          f"{len(OWNED)} partitions of {PARTITIONS}")
    runs = [(True, 100, "old"), (True, 100, "new"), (True, 100, "new"),
            (True, 5000, "old"), (True, 5000, "new"),
            (False, 100, "old"), (False, 100, "new"), (False, 5000, "old"),
            (False, 5000, "new")]
    for fixed, limit, part in runs:
        stages = measure(stores, events, part, limit, fixed, args.reps, args.between)
        cells = "  ".join(f"{k} {statistics.median(v):6.1f}/{max(v):6.1f}"
                          for k, v in stages.items())
        print(f"{'m=0.5' if fixed else 'm=new'} limit {limit:4d} {part}: {cells}")
    print("(ms, median/max over the repetitions. m=0.5: the first new run makes the rankings "
          "and builds the views a step per query; the next ones read the views. m=new: a "
          "threshold not asked before, the rankings scanned together)")


if __name__ == "__main__":
    main()
