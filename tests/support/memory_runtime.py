"""A deployment's runtime in memory: the input and repartition topics as lists, the real ingest
handler and partition states, the recommendations changelog in a FakeReader, and a crash that
rebuilds every state through the real recovery path (runtime/recovery.py, runtime/rebuilds.py)
and reads the input again from the last committed offsets. No broker: property tests drive
thousands of histories.

Delivery follows the worker's rule: a batch's durable writes reach the changelog before its
input offsets may be committed; a crash loses whatever was read but not committed."""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.codec.names import EMITTED_COUNTS, RECOMMENDATIONS
from streams.codec.partitioner import partition_for
from streams.domain.rows import SegmentRow, contract_order
from streams.domain.store import DEFAULT_GRACE_MS
from streams.runtime.ingest import BatchOutput, IngestHandler, InputRecord
from streams.runtime.partitions import PartitionRegistry
from streams.runtime.recovery import Recovery
from streams.tools.produce import Record
from tests.support.fakes import NAMES, FakeReader, Rec

MAX_FUTURE_MS = 3_600_000


@dataclass
class _Topic:
    logs: dict[int, list[Rec]] = field(default_factory=dict)
    read: dict[int, int] = field(default_factory=dict)  # next offset to read
    committed: dict[int, int] = field(default_factory=dict)

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
               timestamp: int) -> None:
        log = self.logs.setdefault(partition, [])
        log.append(Rec(topic, partition, len(log), key, value, timestamp))

    def take(self, partition: int, n: int) -> list[Rec]:
        start = self.read.get(partition, 0)
        out = self.logs.get(partition, [])[start:start + n]
        self.read[partition] = start + len(out)
        return out


class MemoryRuntime:
    def __init__(self, partitions: int = 4, thresholds: tuple[float, ...] = (0.5,),
                 grace_ms: int = DEFAULT_GRACE_MS) -> None:
        self.partitions = partitions
        self.thresholds = thresholds
        self.grace_ms = grace_ms
        self.handler = IngestHandler(NAMES, partitions, MAX_FUTURE_MS)
        self.reader = FakeReader()
        self.input = _Topic()
        self.repartition = _Topic()
        self.dead: list[tuple[InputRecord, str]] = []
        self.registry = PartitionRegistry(thresholds, None, grace_ms)
        self.crashes = 0

    # -- producing -------------------------------------------------------------------------
    def produce(self, record: Record, partition: int | None = None, keyed: bool = False
                ) -> None:
        """``record`` onto the input topic: on ``partition`` if given (with its key if
        ``keyed``, else unkeyed), else keyed on its key's partition, as Kafka's default
        partitioner puts it."""
        if partition is None:
            assert record.key is not None
            partition = partition_for(record.key, self.partitions)
            key: bytes | None = record.key
        else:
            key = record.key if keyed else None
        self.input.append(NAMES.input_topic, partition, key, record.value, record.timestamp_ms)

    # -- running ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Rebuild every partition from the changelog, as a worker assigned all of them."""
        self.registry = PartitionRegistry(self.thresholds, None, self.grace_ms)
        recovery = Recovery(self.registry, self.reader, NAMES, self.reader.highwaters)
        assigned = set(range(self.partitions))
        for table in (RECOMMENDATIONS, EMITTED_COUNTS):
            await recovery.on_rebalance(table, assigned)
        for table in (RECOMMENDATIONS, EMITTED_COUNTS):
            await recovery.on_recovered(table, assigned)
        await recovery.rebuilds.drain()  # (the worker runs them in the background)

    def poll(self, batch: int) -> int:
        """One batch of at most ``batch`` records per partition of each topic; returns how
        many records were handled."""
        out = BatchOutput()
        handled = 0
        for topic, log in ((NAMES.input_topic, self.input),
                           (NAMES.repartition_topic, self.repartition)):
            for p in range(self.partitions):
                records = log.take(p, batch)
                if records:
                    handled += len(records)
                    self.handler.handle(topic, p, self.registry.active[p], records, out)
        self._send(out)
        return handled

    def _send(self, out: BatchOutput) -> None:
        changelog = NAMES.changelog_topic(RECOMMENDATIONS)
        for p, writes in out.writes.items():
            for key, value in writes.items():
                self.reader.write(changelog, p, key, value)
        for p, records in out.repartition.items():
            for key, value in records:
                self.repartition.append(NAMES.repartition_topic, p, key, value, 0)
        self.dead.extend(out.dead)

    def commit(self) -> None:
        """Everything read so far is done (its writes are in the changelog)."""
        for log in (self.input, self.repartition):
            log.committed = dict(log.read)

    async def crash(self) -> None:
        """kill -9: states lost, rebuilt from the changelog; reading resumes at the last
        committed offsets (what was read after them is read again)."""
        self.crashes += 1
        for log in (self.input, self.repartition):
            log.read = dict(log.committed)
        await self.start()

    def drain(self, batch: int) -> None:
        while self.poll(batch):
            self.commit()

    # -- answers ---------------------------------------------------------------------------
    def held(self) -> int:
        """Slots held in memory, forgotten ones not yet swept included."""
        return sum(len(fam.slots) for state in self.registry.active.values()
                   for fam in state.store.families.values())

    def rows(self, program: str, segment_type: str, basis: str, m: float) -> list[SegmentRow]:
        rows: list[SegmentRow] = []
        for state in self.registry.active.values():
            rows += state.query(program, segment_type, basis, m)
        return contract_order(rows)
