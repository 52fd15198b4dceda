"""Background rebuilds (runtime/rebuilds.py) driven in memory through the real recovery: the
assignment callback reads nothing, partitions are rebuilt in bounded slices with the event loop
turning between them, each is served (and its input resumed) once rebuilt, a revocation cancels
a rebuild, and a rebalance that keeps the partition does not start it over."""

from __future__ import annotations

import asyncio

from streams.codec.durable import emitted_key, encode_emitted, encode_recommendation
from streams.codec.durable import recommendation_key as rkey
from streams.codec.names import EMITTED_COUNTS, RECOMMENDATIONS
from streams.domain.events import Event
from streams.runtime.batches import BatchProcessor
from streams.runtime.ingest import IngestHandler
from streams.runtime.partitions import PartitionRegistry, Phase
from streams.runtime.rebuilds import Rebuilds, Step
from streams.runtime.recovery import Recovery
from streams.runtime.sink import Sink
from tests.support.fakes import (
    NAMES,
    PARTITIONS,
    FakeProducer,
    FakeReader,
    Headers,
    event_doc,
    keyed,
)

FAMILY = ("p", "label", "l1", "view")
RECS = NAMES.changelog_topic(RECOMMENDATIONS)
EMITTED = NAMES.changelog_topic(EMITTED_COUNTS)
SLICE = 10


class Worker:
    def __init__(self, reader: FakeReader) -> None:
        self.reader = reader
        self.registry = PartitionRegistry((0.5,))
        self.resumed: list[int] = []
        self.rebuilds = Rebuilds(self.registry, reader, NAMES, lambda *a: None,
                                 resume=self.resumed.append, slice_records=SLICE)
        self.recovery = Recovery(self.registry, reader, NAMES, reader.highwaters,
                                 rebuilds=self.rebuilds)

    async def assign(self, assigned: set[int]) -> None:
        """The assignment callback, then Faust's recovery (nothing left for it to replay)."""
        self.registry.begin_rebalance()  # (the revocation: runtime/rebalance.py)
        for table in (RECOMMENDATIONS, EMITTED_COUNTS):
            await self.recovery.on_rebalance(table, assigned)
        for table in (RECOMMENDATIONS, EMITTED_COUNTS):
            await self.recovery.on_recovered(table, assigned)

    async def slices(self, n: int) -> None:
        for _ in range(n):
            assert await self.rebuilds.step()


def write(reader: FakeReader, partition: int, users: int, weight: float = 0.7,
          start: int = 0) -> None:
    for i in range(start, start + users):
        reader.write(RECS, partition, rkey(FAMILY, f"u{i}"),
                     encode_recommendation(weight, True, 1, 1, partition, "Label"))


def count(state: object) -> int:
    rows = state.query("p", "growth", "label", 0.5)  # type: ignore[attr-defined]
    return sum(r.user_count for r in rows)


async def test_the_callback_reads_nothing_and_each_partition_serves_once_rebuilt() -> None:
    reader = FakeReader()
    write(reader, 0, 35)
    write(reader, 1, 5)
    w = Worker(reader)
    await w.assign({0, 1, 2})
    assert reader.reads == [] and reader.slices == []  # the join did not wait for a read
    assert w.registry.serving and set(w.registry.active) == {2}  # empty: at once
    assert w.registry.rebuilding == {0, 1} and w.resumed == []
    assert w.registry.readiness() is not None  # its first assignment is not in service yet
    await w.slices(2)
    assert 0 not in w.registry.active and w.rebuilds.jobs[0].records == 2 * SLICE
    await w.rebuilds.drain()
    assert set(w.registry.active) == {0, 1, 2} and not w.registry.rebuilding
    assert w.resumed == [0, 1]  # each once, once in service
    assert count(w.registry.active[0]) == 35 and count(w.registry.active[1]) == 5
    # slices of at most SLICE records, each from where the last one ended
    assert [s for t, p, s in reader.slices if t == RECS and p == 0] == [0, 10, 20, 30]
    assert w.registry.readiness() is None
    assert w.recovery.persisted_offset(RECOMMENDATIONS, 0) == 34
    assert w.registry.active[0].ledger.next_offset == 0  # (its emitted counts: none yet)


async def test_the_event_loop_turns_between_slices() -> None:
    reader = FakeReader()
    write(reader, 0, 200)
    w = Worker(reader)
    await w.assign({0})
    ticks = 0

    async def probe() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(probe())
    await w.rebuilds.drain()
    task.cancel()
    assert count(w.registry.active[0]) == 200
    assert ticks >= 200 // SLICE  # at least one turn per slice


async def test_a_revocation_cancels_the_rebuild() -> None:
    reader = FakeReader()
    write(reader, 0, 50)
    w = Worker(reader)
    await w.assign({0, 1})
    await w.slices(2)
    await w.assign({1})  # partition 0 went to another worker
    assert not w.rebuilds.jobs and not w.registry.rebuilding
    assert not await w.rebuilds.step()
    assert 0 not in w.registry.active and w.resumed == []
    assert w.rebuilds.metrics.rebuilds.labels("cancelled")._value.get() == 1


async def test_a_rebalance_that_keeps_the_partition_does_not_start_it_over() -> None:
    reader = FakeReader()
    write(reader, 0, 50)
    w = Worker(reader)
    await w.assign({0})
    await w.slices(3)
    job = w.rebuilds.jobs[0]
    # another worker joins and leaves meanwhile: two rebalances, partition 0 stays here
    w.registry.begin_rebalance()
    for table in (RECOMMENDATIONS, EMITTED_COUNTS):
        await w.recovery.on_rebalance(table, {0})
    assert w.rebuilds.jobs[0] is job and job.positions[RECOMMENDATIONS] == 3 * SLICE
    await w.slices(1)  # it reads on while the group's rebalance goes on
    assert job.positions[RECOMMENDATIONS] == 4 * SLICE and 0 not in w.registry.active
    for table in (RECOMMENDATIONS, EMITTED_COUNTS):
        await w.recovery.on_recovered(table, {0})
    await w.assign({0})
    await w.rebuilds.drain()
    assert count(w.registry.active[0]) == 50
    starts = [s for t, p, s in reader.slices if t == RECS]
    assert starts.count(0) == 1 and starts == sorted(starts)  # never read from 0 again
    assert job.rebalances == 2
    metrics = w.rebuilds.metrics.rebuilds
    assert metrics.labels("started")._value.get() == 1
    assert metrics.labels("continued")._value.get() == 2


class HeldReader(FakeReader):
    """A reader whose next slice, once read, is held until ``release`` is set: the group may
    rebalance meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def read_slices(self, starts: dict[tuple[str, int], int], limit: int
                          ) -> dict[tuple[str, int], tuple[list[tuple[bytes | None,
                                                                       bytes | None, int,
                                                                       Headers]], int]]:
        out = await super().read_slices(starts, limit)
        if self.hold:
            self.hold = False
            self.holding.set()
            await self.release.wait()
        return out


async def test_a_slice_read_for_a_rebuild_revoked_and_started_over_meanwhile_is_dropped() -> None:
    """Two rebalances while a slice is read: the partition revoked, then assigned again (a new
    rebuild from offset 0). The slice, read from where the old rebuild was, is not the new
    one's: applied to it, the records before it would never be read."""
    reader = HeldReader()
    write(reader, 0, 50)
    w = Worker(reader)
    await w.assign({0, 1})
    await w.slices(3)
    old = w.rebuilds.jobs[0]
    reader.hold = True
    step = asyncio.create_task(w.rebuilds.step())  # reads offsets 30-39, held
    await reader.holding.wait()
    await w.assign({1})  # partition 0 went to another worker...
    await w.assign({0, 1})  # ...and came back: rebuilt from the start
    assert w.rebuilds.jobs[0] is not old
    reader.release.set()
    await step
    await w.rebuilds.drain()
    assert count(w.registry.active[0]) == 50
    assert w.recovery.persisted_offset(RECOMMENDATIONS, 0) == 49


async def test_a_rebuilt_partition_waits_for_the_rebalance_to_end() -> None:
    reader = FakeReader()
    write(reader, 0, 5)
    w = Worker(reader)
    await w.assign({0})
    w.registry.begin_rebalance()  # a revocation before the rebuild is done
    await w.rebuilds.drain()
    assert w.rebuilds.jobs[0].step is Step.WAITING and w.registry.phase is Phase.REBALANCING
    assert 0 not in w.registry.active and w.resumed == []
    await w.assign({0})
    await w.rebuilds.drain()
    assert count(w.registry.active[0]) == 5 and w.resumed == [0]


async def test_records_written_while_it_settles_are_read_before_it_serves() -> None:
    reader = FakeReader()
    write(reader, 0, 5)
    key = (FAMILY, "growth", 0.5)
    reader.write(EMITTED, 0, emitted_key(key), encode_emitted(5, 0))
    w = Worker(reader)
    await w.assign({0})
    while w.rebuilds.jobs[0].step is not Step.WAITING:
        await w.rebuilds.step()
    write(reader, 0, 2, start=5)  # a late write of the old owner, say
    reader.write(EMITTED, 0, emitted_key(key), encode_emitted(7, 0, 5))
    await w.rebuilds.drain()
    state = w.registry.active[0]
    assert count(state) == 7 and state.ledger.next_offset == 2
    assert state.ledger.emitted_count(key) == 7


async def test_input_of_a_partition_still_rebuilding_is_not_handled_or_acked() -> None:
    """Exactness: nothing of a partition's input is applied before its rebuild is done (its
    records are left unacked: read again from the committed offset once it serves)."""
    record = keyed(event_doc("u-new", 0.9), 0)
    reader = FakeReader()
    write(reader, record.partition, 30)
    w = Worker(reader)
    producer = FakeProducer()
    processor = BatchProcessor(w.registry, IngestHandler(NAMES, PARTITIONS, 3_600_000),
                               Sink(lambda: producer, NAMES, 1_000_000), w.recovery.repair)
    await w.assign(set(range(PARTITIONS)))
    assert w.registry.rebuilding == {record.partition} and w.registry.serving
    assert await processor([record]) == [] and producer.sent == []
    await w.rebuilds.drain()
    assert await processor([record]) == [record]
    assert count(w.registry.active[record.partition]) == 31


async def test_the_first_assignment_is_ready_once_in_service_later_ones_stay_ready() -> None:
    reader = FakeReader()
    write(reader, 0, 5)
    write(reader, 1, 5)
    w = Worker(reader)
    await w.assign({0})
    assert w.registry.readiness() == ("rebuilding partitions [0] of its first assignment "
                                      "(0 in service)")
    await w.rebuilds.drain()
    assert w.registry.readiness() is None
    await w.assign({0, 1})  # gains a partition: answers come from copies meanwhile (§6)
    assert w.registry.rebuilding == {1} and w.registry.readiness() is None
    state = w.registry.active[0]
    state.apply(Event("p", "u9", "label", "l1", "L", "view", 0.9, True, 5), 5)
    await w.rebuilds.drain()
    assert count(w.registry.active[1]) == 5 and w.registry.active[0] is state
