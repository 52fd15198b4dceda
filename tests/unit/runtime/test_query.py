"""The query service (runtime/query.py): one worker's part of an answer, merged in the
contract's order and memoised while no partition's part changed."""

from __future__ import annotations

import random

from streams.domain.events import Event
from streams.runtime.partitions import PartitionRegistry
from streams.runtime.query import Cluster, QueryService


def service() -> tuple[PartitionRegistry, QueryService]:
    registry = PartitionRegistry((0.5,))
    registry.finish_recovery({0, 1, 2})
    return registry, QueryService(registry, Cluster("http://w1", 4, 5.0),
                                  lambda: {"http://w1": [0, 1, 2], "http://w2": [3]})


def apply(registry: PartitionRegistry, partition: int, user: str, basis_id: str,
          ts: int = 1) -> None:
    registry.active[partition].apply(
        Event("p", user, "label", basis_id, "L", "view", 0.8, True, ts), ts)


def test_parts_of_all_partitions_merged_in_the_contracts_order() -> None:
    registry, query = service()
    apply(registry, 0, "u1", "b")
    apply(registry, 1, "u1", "a")
    apply(registry, 2, "u1", "c")
    apply(registry, 2, "u2", "c")
    rows, covered = query.local_query("p", "growth", "label", 0.5)
    assert covered == [0, 1, 2]
    assert [(r.segment_basis_id, r.user_count) for r in rows] == [("c", 2), ("a", 1), ("b", 1)]


def test_the_merged_answer_is_memoised_until_a_part_changes() -> None:
    registry, query = service()
    apply(registry, 0, "u1", "b")
    first, _ = query.local_query("p", "growth", "label", 0.5)
    again, _ = query.local_query("p", "growth", "label", 0.5)
    assert again is first
    apply(registry, 1, "u1", "a", ts=2)
    changed, _ = query.local_query("p", "growth", "label", 0.5)
    assert changed is not first and len(changed) == 2


def test_readiness_and_the_rest() -> None:
    registry, query = service()
    assert query.is_ready() and query.partitions() == [0, 1, 2]
    assert query.owners() == {"http://w1": [0, 1, 2], "http://w2": [3]}
    assert (query.self_url, query.total_partitions, query.cache_ttl_s) == ("http://w1", 4, 5.0)
    registry.begin_rebalance()
    assert not query.is_ready()


def test_first_rows_and_total_and_their_memo() -> None:
    registry, query = service()
    for n in range(30):  # segment bN has N % 7 + 1 members, on partition N % 3
        for u in range(n % 7 + 1):
            apply(registry, n % 3, f"u{u}", f"b{n:02d}")
    every, _ = query.local_query("p", "growth", "label", 0.5)
    assert len(every) == 30
    for limit in (1, 4, 29, 30, 31, None):
        rows, total, covered = query.local_top("p", "growth", "label", 0.5, limit)
        assert rows == every[:limit] and total == 30 and covered == [0, 1, 2]
    # A memoised prefix serves smaller limits; a wider one is computed again.
    five, _, _ = query.local_top("p", "growth", "label", 0.5, 5)
    three, _, _ = query.local_top("p", "growth", "label", 0.5, 3)
    assert three == five[:3]
    assert query.local_top("p", "growth", "label", 0.5, 12)[0] == every[:12]


def test_first_rows_through_rankings_then_views_as_events_come() -> None:
    """A threshold asked once (the partitions' rankings, scanned together), again (its views
    built a step at a time), and then (from the views), with events between every query:
    always the first rows of the full sorted answer."""
    registry, query = service()
    rng = random.Random(7)
    ts = 1
    for step in range(40):
        for _ in range(25):
            ts += 1
            n = rng.randrange(60)
            registry.active[n % 3].apply(Event(
                "p", f"u{rng.randrange(12)}", "label", f"b{n:02d}", "L", "view",
                None if rng.random() < 0.1 else rng.choice((0.2, 0.5, 0.8)),
                rng.random() < 0.5, ts), ts)
        m = (0.5, 0.2, rng.choice((0.1, 0.5, 0.65)))[step % 3]
        every, _ = query.local_query("p", "growth", "label", m)
        for limit in (1, 7, 100):
            rows, total, _ = query.local_top("p", "growth", "label", m, limit)
            assert rows == every[:limit] and total == len(every)


async def test_held_query_sends_its_first_rows_and_total() -> None:
    registry, query = service()
    for n in range(10):
        apply(registry, n % 3, "u1", f"b{n}")
        if n % 2:
            apply(registry, n % 3, "u2", f"b{n}")
    held = await query.held_query("p", "growth", "label", 0.5, [0, 1, 2], 4)
    every, _ = query.local_query("p", "growth", "label", 0.5)
    assert held.rows == every[:4] and held.total == 10 and held.partitions == [0, 1, 2]
    part = await query.held_query("p", "growth", "label", 0.5, [1], None)
    assert part.total == len(part.rows) == 3
