"""The synthetic generator: deterministic, and never ahead of the broker's clock by default."""

from __future__ import annotations

import time

import orjson

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


def _rec_key(doc: dict[str, object]) -> tuple[object, ...]:
    return (doc["program_id"], doc["segment_basis"], doc["basis_id"], doc["action_type"],
            doc["user_id"])


def test_late_events_follow_newer_ones_including_withdrawals_of_recommendations_never_seen(
) -> None:
    records = [r for r in generate(20_000, seed=3, base_ts=1_000_000, late_ratio=0.05,
                                   duplicate_ratio=0.0) if r.valid]
    seen: dict[tuple[object, ...], int] = {}  # recommendation -> greatest ts sent so far
    first_seen_withdrawn: set[tuple[object, ...]] = set()
    late = late_after_unseen_withdrawal = 0
    for r in records:
        doc = orjson.loads(r.value)
        key = _rec_key(doc)
        ts = doc.get("ts", r.timestamp_ms)
        if key not in seen and doc["weight"] is None:
            first_seen_withdrawn.add(key)
        if key in seen and ts < seen[key]:
            late += 1
            late_after_unseen_withdrawal += key in first_seen_withdrawn
        seen[key] = max(ts, seen.get(key, ts))
    assert late >= 0.03 * len(records), late
    assert late_after_unseen_withdrawal >= 0.01 * len(records), late_after_unseen_withdrawal


def test_the_default_load_has_late_events() -> None:
    records = list(generate(5_000, seed=1, base_ts=1_000_000))
    assert sum(b"unseen-" in r.value and b'"weight":null' in r.value for r in records) >= 20
