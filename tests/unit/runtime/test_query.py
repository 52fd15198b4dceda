"""The query service (runtime/query.py): one worker's part of an answer, merged in the
contract's order and memoised while no partition's part changed."""

from __future__ import annotations

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
