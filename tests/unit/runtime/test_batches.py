"""The batch processor (runtime/batches.py) with a fake producer: a record is handled once its
outputs are acknowledged; failed outputs hold back only their partitions, and a partition whose
durable writes failed is rebuilt before it handles records again."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaTimeoutError

from streams.codec.names import RECOMMENDATIONS
from streams.runtime.batches import YIELD_EVERY, Backoff, BatchProcessor
from streams.runtime.ingest import IngestHandler
from streams.runtime.partitions import PartitionRegistry, Phase
from streams.runtime.sink import Sink
from tests.support.fakes import NAMES, PARTITIONS, FakeProducer, Rec, event_doc, keyed

CHANGELOG = NAMES.changelog_topic(RECOMMENDATIONS)


class Setup:
    def __init__(self) -> None:
        self.producer = FakeProducer()
        self.registry = PartitionRegistry((0.5,))
        self.registry.finish_recovery(set(range(PARTITIONS)))
        self.repairs = 0
        self.processor = BatchProcessor(
            self.registry, IngestHandler(NAMES, PARTITIONS, 3_600_000),
            Sink(lambda: self.producer, NAMES, 1_000_000), self.repair)

    async def repair(self) -> None:
        self.repairs += 1
        self.registry.finish_repair(set(self.registry.stale))


def records(n: int, start: int = 0) -> list[Rec]:
    return [keyed(event_doc(f"u{i}", basis_id=f"l{i % 7}"), offset=start + i) for i in range(n)]


async def test_handled_records_are_returned_once_their_writes_are_acknowledged() -> None:
    s = Setup()
    batch = records(50)
    done = await s.processor(batch)
    assert sorted(r.offset for r in done) == list(range(50))
    assert len(s.producer.to(CHANGELOG)) == 50 and s.processor.stats.processed == 50


async def test_nothing_is_handled_unless_serving() -> None:
    s = Setup()
    s.registry.begin_rebalance()
    assert (await s.processor(records(5))) == []
    assert s.producer.sent == []


async def test_failed_durable_writes_hold_back_their_partition_and_rebuild_it() -> None:
    s = Setup()
    batch = records(40)
    s.producer.failing[CHANGELOG] = KafkaTimeoutError()
    done = await s.processor(batch)
    assert done == []  # every partition's writes failed
    assert s.registry.stale == {r.partition for r in batch}
    assert not s.registry.active.keys() & s.registry.stale
    assert s.processor.stats.failed_batches == 1

    del s.producer.failing[CHANGELOG]
    await asyncio.sleep(0.25)  # the back-off
    done = await s.processor(batch)
    assert s.repairs == 1 and not s.registry.stale
    assert sorted(r.offset for r in done) == list(range(40))


async def test_a_failed_dead_letter_holds_back_only_its_partition() -> None:
    s = Setup()
    good = records(30)
    poison = Rec(NAMES.input_topic, good[0].partition, 1000, b"k", b"not json")
    s.producer.failing[NAMES.dlq_topic] = KafkaTimeoutError()
    done = await s.processor([*good, poison])
    held = good[0].partition
    assert {r.partition for r in done} == {r.partition for r in good} - {held}
    assert not s.registry.stale  # the durable writes went through
    # Until its back-off passes, the held partition's records are not even handled.
    assert (await s.processor([poison])) == []


async def test_a_handler_error_holds_back_that_partition_not_the_batch() -> None:
    s = Setup()
    batch = records(30)
    broken = batch[0].partition
    handle = s.processor.handler.handle

    def failing(topic, partition, state, group, out):  # type: ignore[no-untyped-def]
        if partition == broken:
            raise RuntimeError("a bug")
        handle(topic, partition, state, group, out)

    s.processor.handler.handle = failing  # type: ignore[method-assign]
    done = await s.processor(batch)
    assert {r.partition for r in done} == {r.partition for r in batch} - {broken}
    assert s.registry.stale == {broken}


async def test_a_rebalance_forgets_the_back_offs() -> None:
    s = Setup()
    poison = Rec(NAMES.input_topic, 0, 0, None, b"x")
    s.producer.failing[NAMES.dlq_topic] = KafkaTimeoutError()
    assert (await s.processor([poison])) == []
    del s.producer.failing[NAMES.dlq_topic]
    s.registry.begin_rebalance()
    s.registry.finish_recovery(set(range(PARTITIONS)))
    assert s.registry.phase is Phase.SERVING
    assert (await s.processor([poison])) == [poison]



def one_partition(n: int) -> list[Rec]:
    """``n`` records of one family (so of one partition), each of another user."""
    return [keyed(event_doc(f"u{i}"), offset=i) for i in range(n)]


async def test_a_large_group_of_one_partition_is_handled_in_slices_with_turns_between() -> None:
    s = Setup()
    batch = one_partition(2 * YIELD_EVERY + 7)
    store = s.registry.active[batch[0].partition].store
    seen: list[int] = []

    async def watch() -> None:  # what a request sees at each of its turns
        while True:
            seen.append(store.held)
            await asyncio.sleep(0)

    watcher = asyncio.ensure_future(watch())
    done = await s.processor(batch)
    watcher.cancel()
    assert {YIELD_EVERY, 2 * YIELD_EVERY} <= set(seen)
    assert [r.offset for r in done] == [r.offset for r in batch]
    assert store.held == len(batch) and len(s.producer.to(CHANGELOG)) == len(batch)
    assert s.processor.stats.processed == len(batch)


async def test_a_partition_taken_out_of_service_between_slices_is_read_again() -> None:
    s = Setup()
    batch = one_partition(2 * YIELD_EVERY)
    part = batch[0].partition
    store = s.registry.active[part].store

    handle = s.processor.handler.handle

    def then_a_write_fails(topic, partition, state, group, out):  # type: ignore[no-untyped-def]
        handle(topic, partition, state, group, out)
        s.registry.mark_stale({part})  # (the publisher's, say: it runs in the loop's turns)

    s.processor.handler.handle = then_a_write_fails  # type: ignore[method-assign]
    done = await s.processor(batch)
    assert done == []  # not acked: read again once the partition is rebuilt
    assert store.held == YIELD_EVERY  # its second slice went to no state
    assert s.processor.metrics.applied._value.get() == 0  # counted when read again


async def test_a_rebalance_beginning_between_slices_stops_the_batch_there() -> None:
    s = Setup()
    first = one_partition(2 * YIELD_EVERY)
    other = [keyed(event_doc(f"u{i}", basis_id="l2"), offset=i) for i in range(5)]
    assert other[0].partition != first[0].partition
    handle = s.processor.handler.handle
    handled: list[int] = []

    def then_a_rebalance(topic, partition, state, group, out):  # type: ignore[no-untyped-def]
        handle(topic, partition, state, group, out)
        handled.append(partition)
        s.registry.begin_rebalance()  # (its revocation waits for the batch: the fence)

    s.processor.handler.handle = then_a_rebalance  # type: ignore[method-assign]
    done = await s.processor(first + other)
    assert done == [] and handled == [first[0].partition]  # one slice, then no more
    assert s.processor.metrics.applied._value.get() == 0


async def test_a_rebalance_beginning_during_a_repair_handles_nothing() -> None:
    s = Setup()
    batch = records(20)
    s.registry.mark_stale({batch[0].partition})

    async def repair_then_a_rebalance() -> None:
        await s.repair()
        s.registry.begin_rebalance()

    s.processor.repair = repair_then_a_rebalance
    assert (await s.processor(batch)) == [] and s.producer.sent == []


async def test_input_with_another_partition_count_is_all_repartitioned_without_state() -> None:
    """The input's partition p is co-assigned with state partition p only when both topics
    have the same partition count: otherwise input records of every partition (here 11, and
    0 whose state this worker does not hold) are sent to their family's partition."""
    s = Setup()
    s.registry.begin_rebalance()
    s.registry.finish_recovery({1})
    s.processor.input_copartitioned = lambda: False
    docs = [event_doc(f"u{i}", basis_id=f"l{i % 7}") for i in range(20)]
    batch = [Rec(NAMES.input_topic, 11, i, keyed(d, 0).key, keyed(d, 0).value)
             for i, d in enumerate(docs)]
    batch += [Rec(NAMES.input_topic, 0, i, None, keyed(d, 0).value) for i, d in enumerate(docs)]
    done = await s.processor(batch)
    assert sorted((r.partition, r.offset) for r in done) == sorted(
        (r.partition, r.offset) for r in batch)
    assert len(s.producer.to(NAMES.repartition_topic)) == 40
    assert s.producer.to(CHANGELOG) == []
    # Co-partitioned, input records wait for the worker holding their partition's state.
    s.processor.input_copartitioned = lambda: True
    assert (await s.processor(batch)) == []

def test_backoff_doubles_and_is_forgotten_on_success() -> None:
    now = [0.0]
    backoff: Backoff[str] = Backoff(0.1, 1.0, clock=lambda: now[0])
    for expected in (0.1, 0.2, 0.4, 0.8, 1.0, 1.0):
        backoff.failed("k")
        assert backoff.waiting("k") and abs(backoff.next_in() - expected) < 1e-9
        now[0] += expected
        assert not backoff.waiting("k")
    backoff.succeeded("k")
    assert not backoff and backoff.next_in() == 0.0
