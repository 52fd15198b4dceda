"""Pure aggregation, as the worker does it: parse, apply, encode the durable write, a ledger tick
every 2,000 events with its changes' keys and payloads encoded. Prints events/s.

    python benchmarks/bench_aggregation_speed.py usual|long-tail
"""

from __future__ import annotations

import sys

from streams.tools.bench import long_tail_records, pure_aggregation
from streams.tools.produce import base_ts_ending_now, generate

shape = sys.argv[1]
n = 200_000
if shape == "usual":
    records = list(generate(n, seed=42, programs=3, users=20_000, labels=2_000, assets=5_000,
                            base_ts=base_ts_ending_now(n)))
else:
    records = list(long_tail_records(n, seed=11))
print(f"{pure_aggregation(records, publish_every=2_000):.0f}")
