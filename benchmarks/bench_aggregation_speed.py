"""Pure aggregation, as the worker does it: parse, apply, encode the durable write, a ledger tick
every 2,000 events with its changes' keys and payloads encoded. Prints events/s.

    python benchmarks/bench_aggregation_speed.py usual|long-tail
"""

from __future__ import annotations

import sys

from streams.tools.bench import long_tail_records, pure_aggregation, seeded_events

shape = sys.argv[1]
n = 200_000
records = list(seeded_events(n) if shape == "usual" else long_tail_records(n, seed=11))
print(f"{pure_aggregation(records, publish_every=2_000):.0f}")
