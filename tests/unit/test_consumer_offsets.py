"""The batched consumer's offset bookkeeping (streams/consumer.py) on Faust's structures:
bulk acks, and the offset to commit, without a broker."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from intervaltree import IntervalTree

from streams.consumer import BatchConsumer

TP0 = TP("in", 0)


def consumer(committed: int | None) -> BatchConsumer:
    c = object.__new__(BatchConsumer)  # only the bookkeeping, no Faust service around it
    c._acked = defaultdict(list)
    c._acked_index = defaultdict(set)
    c._committed_offset = defaultdict(lambda: None)
    c._gap = defaultdict(IntervalTree)
    c._n_acked = 0
    c._waiting_for_ack = None
    c.log = logging.getLogger("test")  # type: ignore[assignment]
    if committed is not None:
        c._committed_offset[TP0] = committed
    return c


def test_bulk_acks_commit_up_to_the_first_hole() -> None:
    c = consumer(committed=100)
    c._ack_handled(TP0, list(range(100, 150)))
    c._ack_handled(TP0, list(range(160, 170)))
    assert c._n_acked == 60
    assert c._new_offset(TP0) == 150
    c._committed_offset[TP0] = 150
    assert c._new_offset(TP0) is None  # 150..159 not acked: nothing to commit
    c._ack_handled(TP0, list(range(150, 160)))
    assert c._new_offset(TP0) == 170


def test_acks_below_the_committed_offset_are_ignored() -> None:
    c = consumer(committed=100)
    c._ack_handled(TP0, list(range(90, 110)))
    assert c._acked[TP0] == list(range(100, 110))
    c._ack_handled(TP0, list(range(100, 110)))  # again: nothing new
    assert c._n_acked == 10
    assert c._new_offset(TP0) == 110


def test_stale_acks_never_make_it_commit_backwards() -> None:
    # Acks recorded while the committed offset was unknown (a rebalance cleared it), for
    # records since committed: the partition is assigned again with a committed offset above.
    c = consumer(committed=None)
    c._ack_handled(TP0, list(range(50, 80)))
    c._committed_offset[TP0] = 100
    c._ack_handled(TP0, list(range(100, 120)))
    assert c._new_offset(TP0) == 120
    assert c._acked[TP0] == [] and not c._acked_index[TP0]


def test_gaps_count_as_acked() -> None:
    c = consumer(committed=100)
    c._ack_handled(TP0, [100, 101, 105, 106])
    c._gap[TP0].addi(102, 105)
    assert c._new_offset(TP0) == 107


async def test_a_failed_commit_leaves_the_committed_offset_unknown(monkeypatch: Any) -> None:
    # Faust's Consumer._commit_offsets records the offsets as committed whatever the outcome;
    # the driver returns False when the group "already rebalanced".
    async def faust_commit_offsets(self: Any, offsets: Any, start: bool = True) -> bool:
        self._committed_offset.update(offsets)
        return outcome

    monkeypatch.setattr(FaustConsumer, "_commit_offsets", faust_commit_offsets)
    c = consumer(committed=100)
    outcome = False
    assert await c._commit_offsets({TP0: 150}) is False
    assert c._committed_offset.get(TP0) is None
    # Records from the broker's committed offset on are acked again, and commit.
    c._ack_handled(TP0, list(range(100, 160)))
    assert c._new_offset(TP0) == 160
    outcome = True
    assert await c._commit_offsets({TP0: 160}) is True
    assert c._committed_offset[TP0] == 160


def test_a_hole_below_the_acks_that_persists_is_read_again() -> None:
    c = consumer(committed=100)
    topics = frozenset({"in"})
    c._ack_handled(TP0, list(range(140, 150)))  # 100..139 read, never acked
    assert c._stuck_partitions(topics) == set()  # seen once
    assert c._stuck_partitions(topics) == {TP0}  # the same hole at the next check
    c._ack_handled(TP0, list(range(100, 140)))  # read again
    assert c._stuck_partitions(topics) == set()
    assert c._new_offset(TP0) == 150


def test_holes_that_gaps_fill_or_that_move_are_not_stuck() -> None:
    c = consumer(committed=100)
    topics = frozenset({"in"})
    c._ack_handled(TP0, list(range(140, 150)))
    c._gap[TP0].addi(100, 140)  # offsets that do not exist (transaction markers)
    assert c._stuck_partitions(topics) == set()
    assert c._stuck_partitions(topics) == set()
    c2 = consumer(committed=100)
    c2._ack_handled(TP0, [120])
    assert c2._stuck_partitions(topics) == set()
    c2._committed_offset[TP0] = 110  # commits advanced meanwhile
    assert c2._stuck_partitions(topics) == set()
    assert c2._stuck_partitions(frozenset({"other"})) == set()
