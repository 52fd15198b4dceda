"""Standby-aware placement (runtime/placement.py) and the assignor that applies it
(faust_ext/assignor.py): a departed owner's partitions go to the worker keeping their standby
copy (the owner's successor in URL order), the shares stay balanced, nothing else moves."""

from __future__ import annotations

from typing import Any

import faust
import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from faust.assignor.client_assignment import ClientAssignment, ClientMetadata

from streams.runtime.faust_ext.assignor import previous_owners, standby_aware
from streams.runtime.placement import place, takeovers

A, B, C, D = "http://a", "http://b", "http://c", "http://d"


@pytest.mark.parametrize(("previous", "proposed", "replicas", "want"), [
    # nobody left: Faust's assignment as it is
    ({A: [0, 1], B: [2, 3]}, {A: {0, 1}, B: {2, 3}}, 1, {A: {0, 1}, B: {2, 3}}),
    # a worker joins: nothing to take over
    ({A: [0, 1, 2, 3]}, {A: {0, 1}, B: {2, 3}}, 1, {A: {0, 1}, B: {2, 3}}),
    # b left; its copies are on c (b's successor): c takes 2 and 3 over, and gives a its
    # highest own partition back to stay within ceil(6 / 2) = 3
    ({A: [0, 1], B: [2, 3], C: [4, 5]}, {A: {0, 1, 2}, C: {3, 4, 5}}, 1,
     {A: {0, 1, 5}, C: {2, 3, 4}}),
    # c left; its successor wraps around to a
    ({A: [0, 1], B: [2, 3], C: [4, 5]}, {A: {0, 1, 4}, B: {2, 3, 5}}, 1,
     {A: {0, 4, 5}, B: {1, 2, 3}}),
    # b and its successor c left: with two copies d holds both's, and takes them over (its
    # own two go to a, which would have rebuilt two partitions anyway)
    ({A: [0, 1], B: [2, 3], C: [4, 5], D: [6, 7]}, {A: {0, 1, 2, 4}, D: {3, 5, 6, 7}}, 2,
     {A: {0, 1, 6, 7}, D: {2, 3, 4, 5}}),
    # no copies kept: Faust's assignment as it is
    ({A: [0, 1], B: [2, 3]}, {A: {0, 1, 2, 3}}, 0, {A: {0, 1, 2, 3}}),
])
def test_placement(previous: dict[str, list[int]], proposed: dict[str, set[int]],
                   replicas: int, want: dict[str, set[int]]) -> None:
    got = place(proposed, previous, replicas)
    assert got == want
    assert sorted(p for ps in got.values() for p in ps) == sorted(
        p for ps in proposed.values() for p in ps)  # every partition once


def test_takeovers_name_the_first_holder_still_there() -> None:
    previous = {A: [0], B: [1], C: [2]}
    assert takeovers(previous, [A, C], 1) == {1: C}
    assert takeovers(previous, [A], 1) == {2: A}  # b's holder c is gone too; c's is a
    assert takeovers(previous, [A], 2) == {1: A, 2: A}


def test_the_previous_owners_are_what_most_members_report() -> None:
    t = "app-recommendations-changelog"
    old = {A: {t: [0, 1]}, B: {t: [2, 3]}}
    new_member: dict[str, Any] = {}
    assert previous_owners([old, old, new_member], t) == {A: [0, 1], B: [2, 3]}
    assert previous_owners([new_member], t) == {}


class _Cluster:
    def __init__(self, topics: dict[str, int]) -> None:
        self.topics = topics

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.topics[topic]))


def test_the_leader_moves_a_departed_owners_partitions_in_every_copartitioned_topic() -> None:
    changelog = "app-recommendations-changelog"
    topics = {"in": 6, "app-by-segment": 6, changelog: 6, "app-emitted-changelog": 6,
              "other": 3}
    app = faust.App("app", broker="kafka://127.0.0.1:1", store="memory://")
    standby_aware(app, changelog, partitions=6, replicas=1)
    assignor = app.assignor
    previous = {A: [0, 1], B: [2, 3], C: [4, 5]}
    distribution = {url: {changelog: ps} for url, ps in previous.items()}
    members = {}
    for member, url in (("m-a", A), ("m-c", C)):  # b died
        own = previous[url]
        metadata = ClientMetadata(
            assignment=ClientAssignment(
                actives={t: list(own) for t, n in topics.items() if n == 6}
                | {"other": [own[0] % 3]}, standbys={}),
            url=url, changelog_distribution=distribution)
        members[member] = ConsumerProtocolMemberMetadata(0, sorted(topics), metadata.dumps())
    result = assignor._perform_assignment(_Cluster(topics), members)
    actives = {}
    for member, assignment in result.items():
        meta = ClientMetadata.loads(assignor._decompress(assignment.user_data))
        actives[member] = {t: set(ps) for t, ps in meta.assignment.actives.items()}
    assert actives["m-c"][changelog] >= {2, 3}  # c kept b's copies: it takes them over
    for member in actives:  # co-partitioned topics moved together
        assert len({frozenset(actives[member][t]) for t, n in topics.items() if n == 6}) == 1
    assert actives["m-a"][changelog] | actives["m-c"][changelog] == set(range(6))
    assert len(actives["m-a"][changelog]) == len(actives["m-c"][changelog]) == 3
    # the other partition count's topic is left as Faust assigned it
    assert actives["m-a"]["other"] | actives["m-c"]["other"] == {0, 1, 2}
