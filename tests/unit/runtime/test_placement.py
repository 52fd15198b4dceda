"""Standby-aware placement (runtime/placement.py) and the assignor that applies it
(faust_ext/assignor.py): a departed owner's partitions go to the worker keeping their standby
copy (where ``standby.holders`` puts it), the shares stay balanced, nothing else moves."""

from __future__ import annotations

from typing import Any

import faust
import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from faust.assignor.client_assignment import ClientAssignment, ClientMetadata

from streams.runtime.faust_ext.assignor import previous_owners, standby_aware
from streams.runtime.placement import place, takeovers
from streams.runtime.standby import holders

A, B, C, D = "http://a", "http://b", "http://c", "http://d"


# Where the copies are (standby.holders; asserted below so that the cases stay readable):
# with one copy, of a: 0,1 -> b; of b: 2 -> c, 3 -> a; of c: 4 -> b, 5 -> a.
COPIES_1 = {0: [B], 1: [B], 2: [C], 3: [A], 4: [B], 5: [A]}
# with two copies and d: of b: 2 -> c, a; 3 -> d, a; of c: 4 -> d, b; 5 -> a, d.
COPIES_2 = {2: [C, A], 3: [D, A], 4: [D, B], 5: [A, D]}


def test_the_cases_copies_are_where_the_holders_put_them() -> None:
    assert holders({A: [0, 1], B: [2, 3], C: [4, 5]}, 1) == COPIES_1
    assert holders({A: [0, 1], B: [2, 3], C: [4, 5], D: [6, 7]}, 2).items() >= COPIES_2.items()


@pytest.mark.parametrize(("previous", "proposed", "replicas", "want"), [
    # nobody left: Faust's assignment as it is
    ({A: [0, 1], B: [2, 3]}, {A: {0, 1}, B: {2, 3}}, 1, {A: {0, 1}, B: {2, 3}}),
    # a worker joins: nothing to take over
    ({A: [0, 1, 2, 3]}, {A: {0, 1}, B: {2, 3}}, 1, {A: {0, 1}, B: {2, 3}}),
    # b left; c takes 2 over and a takes 3 over: one for one, the shares stay balanced
    ({A: [0, 1], B: [2, 3], C: [4, 5]}, {A: {0, 1, 2}, C: {3, 4, 5}}, 1,
     {A: {0, 1, 3}, C: {2, 4, 5}}),
    # c left; b takes 4 and a takes 5
    ({A: [0, 1], B: [2, 3], C: [4, 5]}, {A: {0, 1, 4}, B: {2, 3, 5}}, 1,
     {A: {0, 1, 5}, B: {2, 3, 4}}),
    # b and c left: with two copies each of their partitions has one on a or d (2's first
    # holder c is gone too, its second is a)
    ({A: [0, 1], B: [2, 3], C: [4, 5], D: [6, 7]}, {A: {0, 1, 2, 4}, D: {3, 5, 6, 7}}, 2,
     {A: {0, 1, 2, 5}, D: {3, 4, 6, 7}}),
    # c left and Faust gave both its partitions to a: b takes 4 over from it
    ({A: [0, 1], B: [2, 3], C: [4, 5]}, {A: {0, 1, 4, 5}, B: {2, 3}}, 1,
     {A: {0, 5, 1}, B: {2, 3, 4}}),
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
    # one copy: of 0 on b, of 1 on c, of 2 on b; a second: of 1 on a, of 2 on a
    assert takeovers(previous, [A, C], 1) == {1: C}
    assert takeovers(previous, [A, B], 1) == {2: B}
    assert takeovers(previous, [A], 1) == {}  # each one's copy was on the other: both gone
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
    # b's copies: of 2 on c, of 3 on a; each takes over the one it kept
    assert COPIES_1[2] == [C] and COPIES_1[3] == [A]
    assert 2 in actives["m-c"][changelog] and 3 in actives["m-a"][changelog]
    for member in actives:  # co-partitioned topics moved together
        assert len({frozenset(actives[member][t]) for t, n in topics.items() if n == 6}) == 1
    assert actives["m-a"][changelog] | actives["m-c"][changelog] == set(range(6))
    assert len(actives["m-a"][changelog]) == len(actives["m-c"][changelog]) == 3
    # the other partition count's topic is left as Faust assigned it
    assert actives["m-a"]["other"] | actives["m-c"]["other"] == {0, 1, 2}
