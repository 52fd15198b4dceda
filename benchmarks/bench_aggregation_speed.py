"""Pure aggregation, as the worker does it: parse, apply, encode the durable write, a ledger tick
every 2,000 events with its changes' keys and payloads encoded. Prints events/s.

    python benchmarks/bench_aggregation_speed.py usual|long-tail
"""

from __future__ import annotations

import sys
import time

from streams.codec.changes import change_payload, count_payload, segment_key
from streams.codec.durable import encode_applied, recommendation_key
from streams.codec.input import parse_event
from streams.domain.exceptions import InvalidEvent
from streams.domain.ledger import ChangeLedger
from streams.domain.store import FamilyStore
from streams.tools.bench import long_tail_records
from streams.tools.produce import base_ts_ending_now, generate

shape = sys.argv[1]
n = 200_000
if shape == "usual":
    records = list(generate(n, seed=42, programs=3, users=20_000, labels=2_000, assets=5_000,
                            base_ts=base_ts_ending_now(n)))
else:
    records = list(long_tail_records(n, seed=11))
store = FamilyStore()
ledger = ChangeLedger(0, (0.5,))
started = time.perf_counter()
for offset, r in enumerate(records):
    try:
        ev = parse_event(r.value, r.timestamp_ms)
    except InvalidEvent:
        continue
    if store.apply(ev, offset):
        recommendation_key(ev.family, ev.user_id)
        encode_applied(ev, offset, 0)
    if offset % 2000 == 1999:
        pub = ledger.take(store)
        if pub is not None:
            for c in pub.changes:
                segment_key(c.key)
                change_payload(c, 0, 0)
                count_payload(c, 0)
            ledger.published(pub)
print(f"{len(records) / (time.perf_counter() - started):.0f}")
