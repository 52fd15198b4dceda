"""In-memory stand-ins for what the runtime's collaborators talk to (the producer, the changelog
reader, input records), so that unit tests drive the runtime without a broker. The integration
tests use the real broker and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import orjson

from streams.codec.keys import family_key
from streams.codec.names import Names
from streams.codec.partitioner import partition_for

NAMES = Names("app", "in", "dlq", "changes")
PARTITIONS = 4


@dataclass(frozen=True)
class Rec:
    """An input record as aiokafka hands it over (timestamp in ms)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 1_767_225_600_000


def event_doc(user: str, weight: float | None = 0.7, *, program: str = "p",
              basis_id: str = "l1", in_history: bool = False, ts: int = 1_767_225_600_000,
              name: str = "Label") -> dict[str, Any]:
    return {"program_id": program, "user_id": user, "segment_basis": "label",
            "basis_id": basis_id, "name": name, "action_type": "view", "weight": weight,
            "in_history": in_history, "ts": ts}


def family_of(doc: dict[str, Any]) -> tuple[str, str, str, str]:
    return (doc["program_id"], doc["segment_basis"], doc["basis_id"], doc["action_type"])


def keyed(doc: dict[str, Any], offset: int, partitions: int = PARTITIONS) -> Rec:
    """An input record keyed by its family, on its family's partition (the fast path)."""
    key = family_key(family_of(doc))
    return Rec(NAMES.input_topic, partition_for(key, partitions), offset, key,
               orjson.dumps(doc))


def unkeyed(doc: dict[str, Any], partition: int, offset: int) -> Rec:
    return Rec(NAMES.input_topic, partition, offset, None, orjson.dumps(doc))


class _Batch:
    def __init__(self, capacity: int) -> None:
        self.records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self.capacity = capacity

    def append(self, *, key: bytes | None, value: bytes | None, timestamp: int | None,
               headers: list[tuple[str, bytes]] | None = None) -> Any:
        assert headers is None or isinstance(headers, list)  # as aiokafka's builder demands
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value, headers or []))
        return object()


@dataclass
class Sent:
    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class FakeProducer:
    """Records what is sent; deliveries succeed at once, fail for the topics in ``failing``, or
    wait while ``held`` until ``release()``."""

    def __init__(self, partitions: int = PARTITIONS, batch_capacity: int = 1000) -> None:
        self.partitions = partitions
        self.batch_capacity = batch_capacity
        self.sent: list[Sent] = []
        self.failing: dict[str, BaseException] = {}
        self.held = False
        self._pending: list[tuple[asyncio.Future[Any], Any]] = []
        # (topic, partition) -> the offset of the next record, as the broker gives them (records
        # of batches that fail are counted too: a write whose acknowledgement was lost).
        self.ends: dict[tuple[str, int], int] = {}

    def create_batch(self) -> _Batch:
        return _Batch(self.batch_capacity)

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int
                         ) -> asyncio.Future[Any]:
        base = self.ends.get((topic, partition), 0)
        for key, value, headers in batch.records:
            self.sent.append(Sent(topic, partition, key, value, headers))
        self.ends[(topic, partition)] = base + len(batch.records)
        return self._delivery(topic, SimpleNamespace(offset=base))

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[Any]:
        self.sent.append(Sent(topic, partition, key, value, list(headers or [])))
        return self._delivery(topic)

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def release(self) -> None:
        self.held = False
        for future, result in self._pending:
            if not future.done():
                future.set_result(result)
        self._pending.clear()

    def to(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]

    def _delivery(self, topic: str, result: Any = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if topic in self.failing:
            future.set_exception(self.failing[topic])
        elif self.held:
            self._pending.append((future, result))
        else:
            future.set_result(result)
        return future


Headers = list[tuple[str, bytes]]
Logged = tuple[bytes | None, bytes | None, Headers]  # key, value, headers


class FakeReader:
    """A changelog reader over in-memory changelogs: topic -> partition -> [(key, value,
    headers)], each record's offset its index."""

    def __init__(self) -> None:
        self.logs: dict[str, dict[int, list[Logged]]] = {}
        self.reads: list[tuple[str, set[int]]] = []
        self.slices: list[tuple[str, int, int]] = []  # topic, partition, start
        self.failing: BaseException | None = None

    def write(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
              headers: Headers | None = None) -> None:
        self.logs.setdefault(topic, {}).setdefault(partition, []).append(
            (key, value, list(headers or [])))

    def write_sent(self, sent: Iterable[Sent]) -> None:
        """What a FakeProducer sent, as the broker would have it."""
        for s in sent:
            assert s.partition is not None
            self.write(s.topic, s.partition, s.key, s.value, s.headers)

    def end(self, topic: str, partition: int) -> int:
        return len(self.logs.get(topic, {}).get(partition, []))

    async def read(self, topic: str, partitions: set[int], on_record: Any) -> dict[int, int]:
        self.reads.append((topic, set(partitions)))
        if self.failing is not None:
            raise self.failing
        out = {}
        for p in sorted(partitions):
            records = self.logs.get(topic, {}).get(p, [])
            for offset, (key, value, headers) in enumerate(records):
                on_record(p, key, value, offset, headers)
            if records:
                out[p] = len(records) - 1
        return out

    async def highwaters(self, topic: str, partitions: set[int]) -> dict[int, int]:
        return {p: self.end(topic, p) for p in partitions}

    async def end_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        if self.failing is not None:
            raise self.failing
        return {(t, p): self.end(t, p) for t, p in partitions}

    async def read_slices(self, starts: dict[tuple[str, int], int], limit: int
                          ) -> dict[tuple[str, int],
                                    tuple[list[tuple[bytes | None, bytes | None, int, Headers]],
                                          int]]:
        """At most ``limit`` records in all, partition after partition in (topic, partition)
        order (``slices`` notes each partition read and where from)."""
        if self.failing is not None:
            raise self.failing
        out = {}
        for (topic, partition), start in sorted(starts.items()):
            records = self.logs.get(topic, {}).get(partition, [])[start:start + limit]
            limit -= len(records)
            if records:
                self.slices.append((topic, partition, start))
            out[(topic, partition)] = (
                [(k, v, o, h) for o, (k, v, h) in enumerate(records, start=start)],
                start + len(records))
        return out

    def rebuilt(self, topic: str) -> set[int]:
        """The partitions of ``topic`` read from their start in slices."""
        return {p for t, p, start in self.slices if t == topic and start == 0}


@dataclass
class ConsumerRecord:
    key: bytes | None
    value: bytes | None
    offset: int
    headers: Headers = field(default_factory=list)


class FakeChangelogConsumer:
    """What the standby reader and offset lookups use of a group-less AIOKafkaConsumer, over a
    FakeReader's changelogs. ``failing``: every call but start and stop raises it."""

    def __init__(self, reader: FakeReader, failing: BaseException | None = None) -> None:
        self.reader = reader
        self.failing = failing
        self.positions: dict[Any, int] = {}
        self.gate: asyncio.Event | None = None  # when set: a fetch waits for it once taken
        self.fetched = asyncio.Event()

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def _check(self) -> None:
        if self.failing is not None:
            raise self.failing

    def assign(self, tps: Iterable[Any]) -> None:
        self._check()
        self.positions = {tp: self.positions.get(tp, 0) for tp in tps}

    async def seek_to_beginning(self, *tps: Any) -> None:
        self._check()
        for tp in tps:
            self.positions[tp] = 0

    def seek(self, tp: Any, offset: int) -> None:
        self.positions[tp] = offset

    async def end_offsets(self, tps: Iterable[Any]) -> dict[Any, int]:
        self._check()
        return {tp: self.reader.end(tp.topic, tp.partition) for tp in tps}

    def highwater(self, tp: Any) -> int:
        assert tp in self.positions, "Partition is not assigned"  # (as aiokafka's)
        return self.reader.end(tp.topic, tp.partition)

    def assignment(self) -> set[Any]:
        return set(self.positions)

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None
                      ) -> dict[Any, list[ConsumerRecord]]:
        self._check()
        out = {}
        for tp, position in self.positions.items():
            log = self.reader.logs.get(tp.topic, {}).get(tp.partition, [])
            if position < len(log):
                out[tp] = [ConsumerRecord(k, v, o, h) for o, (k, v, h) in
                           enumerate(log[position:], start=position)]
                self.positions[tp] = len(log)
        if self.gate is not None and out:
            self.fetched.set()
            await self.gate.wait()
        await asyncio.sleep(0.001)
        return out


class FakeGroupLag:
    """The group's lag per partition, as set by the test."""

    def __init__(self, lag: dict[int, int] | None = None, ends: int = -1) -> None:
        self.lag = lag or {}
        self.ends = ends
        self.refreshes = 0

    def of(self, partition: int) -> int:
        return self.lag.get(partition, 0)

    async def refresh(self, since: float | None = None) -> None:
        self.refreshes += 1
