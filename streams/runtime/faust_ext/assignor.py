"""Faust's partition assignor, standby-aware (written against faust-streaming 0.15.3: the
overridden ``PartitionAssignor._update_member_urls`` and ``_global_table_standby_assignments``,
the two steps around the co-partitioned assignment in ``_perform_assignment``).

The group leader computes the assignment as Faust does, then moves each partition of an owner
that left the group to the worker keeping its standby copy (runtime/placement.py), in every
topic co-partitioned with the state (same partition number), before the assignment and the
changelog distribution the members learn are built from it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

from faust.assignor import PartitionAssignor

from streams.runtime.placement import place


def standby_aware(app: Any, changelog: str, partitions: int, replicas: int) -> None:
    """Make ``app`` assign with :class:`StandbyAwareAssignor`: ``changelog`` is the topic whose
    distribution says who owned what, ``partitions`` the state's partition count, ``replicas``
    how many copies each partition has (SEGMENTS_STANDBY_REPLICAS)."""
    app.conf.PartitionAssignor = StandbyAwareAssignor
    app.standby_placement = (changelog, partitions, replicas)


class StandbyAwareAssignor(PartitionAssignor):
    _previous: dict[str, list[int]] | None = None

    def _update_member_urls(self, clients_metadata: Any) -> None:
        # (the leader, before the co-partitioned assignment: the members' metadata carries
        # the previous assignment's changelog distribution)
        super()._update_member_urls(clients_metadata)
        changelog, _, _ = _placement(self.app)
        self._previous = previous_owners(
            [m.changelog_distribution for m in clients_metadata.values()], changelog)

    def _global_table_standby_assignments(self, assignments: Any,
                                          partitions_by_topic: Mapping[str, int]) -> Any:
        assignments = super()._global_table_standby_assignments(assignments,
                                                                partitions_by_topic)
        changelog, partitions, replicas = _placement(self.app)
        if not self._previous or replicas <= 0:
            return assignments
        client_of = {self._member_urls[c]: c for c in assignments}
        proposed = {url: set(assignments[c].actives.get(changelog, []))
                    for url, c in client_of.items()}
        placed = place(proposed, self._previous, replicas)
        topics = [t for t, n in partitions_by_topic.items() if n == partitions]
        for url, wanted in placed.items():
            gained = wanted - proposed[url]
            if not gained:
                continue
            for other, had in proposed.items():
                moved = gained & had
                if not moved or other == url:
                    continue
                giver, taker = assignments[client_of[other]], assignments[client_of[url]]
                for topic in topics:
                    given = set(giver.actives.get(topic, [])) & moved
                    if given:
                        giver.actives[topic] = sorted(set(giver.actives[topic]) - given)
                        taker.actives[topic] = sorted(set(taker.actives.get(topic, []))
                                                      | given)
        return assignments


def _placement(app: Any) -> tuple[str, int, int]:
    placement: tuple[str, int, int] = getattr(app, "standby_placement")  # noqa: B009
    return placement


def previous_owners(distributions: list[Any], changelog: str) -> dict[str, list[int]]:
    """Worker URL -> its partitions of ``changelog`` in the previous assignment, as most members
    report it (a member new to the group reports none)."""
    seen: Counter[str] = Counter()
    decoded: dict[str, dict[str, list[int]]] = {}
    for distribution in distributions:
        owners = {str(url): sorted(topics.get(changelog, []))
                  for url, topics in (distribution or {}).items()}
        if not any(owners.values()):
            continue
        key = json.dumps(owners, sort_keys=True)
        seen[key] += 1
        decoded[key] = owners
    if not seen:
        return {}
    return decoded[seen.most_common(1)[0][0]]
