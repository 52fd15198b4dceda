"""The synthetic generator: deterministic, and never ahead of the broker's clock by default."""

from __future__ import annotations

import time

from streams.tools.produce import EVENT_SPACING_MS, base_ts_ending_now, generate


def test_same_seed_and_base_give_the_same_records() -> None:
    a = list(generate(2000, seed=5, base_ts=1_000_000))
    b = list(generate(2000, seed=5, base_ts=1_000_000))
    assert a == b
    assert a != list(generate(2000, seed=6, base_ts=1_000_000))


def test_default_base_ends_now() -> None:
    # Kafka rejects record timestamps more than an hour ahead (log.message.timestamp.after.max.ms);
    # 1,000,000 events 10 ms apart span ~2.8 hours.
    events = 1_000_000
    before = int(time.time() * 1000)
    base = base_ts_ending_now(events)
    after = int(time.time() * 1000)
    last = base + (events - 1) * EVENT_SPACING_MS
    assert before - EVENT_SPACING_MS <= last <= after
    assert max(r.timestamp_ms for r in generate(3000, seed=1, base_ts=base_ts_ending_now(3000))
               ) <= int(time.time() * 1000)
