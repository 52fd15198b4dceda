"""The batched consumer's offset bookkeeping (streams/consumer.py) on Faust's structures:
bulk acks, and the offset to commit, without a broker."""

from __future__ import annotations

from collections import defaultdict

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
