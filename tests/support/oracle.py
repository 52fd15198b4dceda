"""An independent model of the contract's semantics (section 2), in plain Python.

It reads the generator's records in production order (which is partition order: records are
keyed by segment family) and applies the rules literally: latest (ts, position) wins per
recommendation, a null weight is an event like any other (kept with its ts whether or not the
recommendation was ever seen, so an older event arriving after it is ignored), growth/base/
discovery membership, counts and means by brute force over the members.

Aging (§2, "Aging, bounded state"), when given a grace and the partition count: each
partition's watermark is the greatest ts applied on it minus the grace; a withdrawal older than
the watermark is forgotten (the recommendation holds no state); an event older than the
watermark for a recommendation without state is too late (listed in ``late``, changes nothing).
Without a grace there is no aging: callers keep their event times within SEGMENTS_GRACE_MS."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from streams.codec.keys import family_key
from streams.codec.partitioner import partition_for
from streams.tools.produce import Record

TYPES = ("growth", "base", "discovery")
THRESHOLDS = (0.0, 0.25, 0.5, 0.731, 1.0)


class Oracle:
    def __init__(self, grace_ms: int | None = None, partitions: int | None = None) -> None:
        # (program, basis, basis_id, action, user) -> (ts, seq, weight, in_history)
        self.recs: dict[tuple[str, ...], tuple[int, int, float | None, bool]] = {}
        # family -> ((ts, seq), name)
        self.names: dict[tuple[str, ...], tuple[tuple[int, int], str]] = {}
        self.seq = 0
        self.grace_ms = grace_ms
        self.partitions = partitions
        self.max_ts: dict[int, int] = {}  # partition -> greatest ts applied
        self.late: list[Record] = []

    def feed(self, records: list[Record]) -> None:
        for r in records:
            self.seq += 1
            if not r.valid:
                continue
            doc = json.loads(r.value)
            ts = doc.get("ts", r.timestamp_ms)
            fam = (doc["program_id"], doc["segment_basis"], doc["basis_id"], doc["action_type"])
            key = (*fam, doc["user_id"])
            old = self.recs.get(key)
            if self.grace_ms is not None:
                assert self.partitions is not None
                partition = partition_for(family_key(fam), self.partitions)
                if partition in self.max_ts:
                    watermark = self.max_ts[partition] - self.grace_ms
                    if old is not None and old[2] is None and old[0] < watermark:
                        old = None  # a withdrawal older than the watermark is forgotten
                        del self.recs[key]
                    if old is None and ts < watermark:
                        self.late.append(r)
                        continue
                self.max_ts[partition] = max(ts, self.max_ts.get(partition, ts))
            if old is not None and ts < old[0]:
                continue
            self.recs[key] = (ts, self.seq, doc["weight"], doc["in_history"])
            name = doc.get("name")
            name = doc["basis_id"] if name is None else name
            if fam not in self.names or (ts, self.seq) > self.names[fam][0]:
                self.names[fam] = ((ts, self.seq), name)

    def programs(self) -> set[str]:
        return {k[0] for k in self.recs}

    def segments(self, program: str, segment_type: str, basis: str, m: float
                 ) -> list[tuple[Any, ...]]:
        members: dict[tuple[str, ...], list[float]] = defaultdict(list)
        for (p, b, bid, act, _user), (_ts, _seq, w, hist) in self.recs.items():
            if p != program or b != basis or w is None or w < m:
                continue
            if segment_type == "base" and not hist:
                continue
            if segment_type == "discovery" and hist:
                continue
            members[(p, b, bid, act)].append(w)
        rows = []
        for fam, ws in members.items():
            rows.append((segment_type, fam[1], fam[2], fam[3], self.names[fam][1], len(ws),
                         math.fsum(ws) / len(ws)))
        rows.sort(key=lambda r: (-r[5], r[2], r[3], r[4]))
        return rows


def assert_rows_equal(got: list[Any], want: list[tuple[Any, ...]], context: str) -> None:
    """Same segments, exact counts, strengths within 1e-9 relative."""
    assert len(got) == len(want), f"{context}: {len(got)} segments, oracle has {len(want)}"
    for g, w in zip(got, want, strict=True):
        assert tuple(g[:6]) == tuple(w[:6]), f"{context}: {g} != {w}"
        assert math.isclose(g[6], w[6], rel_tol=1e-9, abs_tol=0.0), f"{context}: {g} != {w}"
