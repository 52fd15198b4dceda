"""The ingest handler: records of one partition in, what they produce out, as values.

Input records are validated (invalid: a dead letter with the reason), then aggregated here when
they already sit on their segment family's partition under the family's key, else sent on to
the repartition topic under that key; repartitioned records are aggregated. What is produced
(durable writes, repartitioned events, dead letters) is collected in a ``BatchOutput`` for the
sink to send: no I/O here, so unit tests drive it with plain records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from streams.codec.durable import encode_applied, recommendation_key
from streams.codec.input import encode_input, parse_event
from streams.codec.keys import family_key
from streams.codec.names import Names
from streams.codec.partitioner import partition_for
from streams.codec.position import input_position
from streams.codec.wire import decode_event, encode_event
from streams.domain.events import Event, FamilyKey
from streams.domain.exceptions import InvalidEvent
from streams.domain.partition import PartitionState

ROUTE_MEMO_MAX = 20_000  # families whose key and partition are remembered


class InputRecord(Protocol):
    """What the handler reads of a record (aiokafka's ``ConsumerRecord``: timestamps in ms)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class LateRecord:
    """A repartitioned event too late to apply, as its dead letter shows it: the event as an
    input record value, and where the repartitioned record was."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class Outcome:
    """What became of one partition's records in a batch."""

    applied: int = 0
    ignored: int = 0  # not newer than the stored state
    invalid: int = 0
    late: int = 0  # older than the watermark, for a recommendation without state
    forgotten: int = 0  # withdrawals older than the watermark, forgotten after the batch
    applied_timestamps: list[int] = field(default_factory=list)  # of the input records, ms


@dataclass(slots=True)
class BatchOutput:
    """What handling a batch produces."""

    # Durable writes per changelog partition: recommendation key -> value (the last one wins;
    # None: a tombstone).
    writes: dict[int, dict[bytes, bytes | None]] = field(default_factory=dict)
    dead: list[tuple[InputRecord, str]] = field(default_factory=list)  # record, reason
    # Repartitioned events per destination partition (each source's events in their order),
    # and the input partitions they come from.
    repartition: dict[int, list[tuple[bytes, bytes]]] = field(default_factory=dict)
    sources: dict[int, set[int]] = field(default_factory=dict)
    outcomes: dict[tuple[str, int], Outcome] = field(default_factory=dict)

    def outcome(self, topic: str, partition: int) -> Outcome:
        """The outcome of a partition's records (handled in one or more slices)."""
        outcome = self.outcomes.get((topic, partition))
        if outcome is None:
            outcome = self.outcomes[(topic, partition)] = Outcome()
        return outcome

    def writes_for(self, partition: int) -> dict[bytes, bytes | None]:
        writes = self.writes.get(partition)
        if writes is None:
            writes = self.writes[partition] = {}
        return writes


class IngestHandler:
    def __init__(self, names: Names, partitions: int, max_future_ms: int) -> None:
        self.input_topic = names.input_topic
        self.partitions = partitions
        self.max_future_ms = max_future_ms
        self._routes: dict[FamilyKey, tuple[bytes, int]] = {}

    def route(self, family: FamilyKey) -> tuple[bytes, int]:
        """A segment family's key and the partition it hashes to (memoised: computing them
        takes microseconds, looking them up a tenth of one)."""
        route = self._routes.get(family)
        if route is None:
            if len(self._routes) >= ROUTE_MEMO_MAX:
                self._routes.clear()
            key = family_key(family)
            route = self._routes[family] = (key, partition_for(key, self.partitions))
        return route

    def handle(self, topic: str, partition: int, state: PartitionState | None,
               records: Iterable[InputRecord], out: BatchOutput) -> None:
        """Records of one partition of ``topic``, in offset order, into ``out`` (a batch's, or a
        slice of them, the next slice in the next call; ``state`` may be None for the input
        only: see :meth:`ingest`); then the withdrawals the watermark passed are forgotten,
        their changelog records tombstoned."""
        if topic == self.input_topic:
            outcome = self.ingest(partition, state, records, out)
        else:
            assert state is not None, "repartitioned records need their partition's state"
            outcome = self.aggregate(topic, partition, state, records, out)
        if state is None:
            return
        store = state.store
        outcome.forgotten += store.expire()
        if store.forgotten:
            writes = out.writes_for(partition)
            for family, user in store.take_forgotten():
                writes[recommendation_key(family, user)] = None

    @staticmethod
    def late(ev: Event, partition: int, state: PartitionState | None) -> str:
        """The dead-letter reason of an event too late to apply."""
        store = state.store if state is not None else None
        return (f"late: ts {ev.ts} is older than partition {partition}'s watermark "
                f"{store and store.watermark} (greatest ts applied minus SEGMENTS_GRACE_MS "
                f"{store and store.grace_ms}) and the recommendation holds no state")

    def ingest(self, partition: int, state: PartitionState | None,
               records: Iterable[InputRecord], out: BatchOutput) -> Outcome:
        """Input records: validate each, then aggregate it into ``state`` when it is keyed by
        its family on its family's partition, else repartition it. ``state`` None: the input
        partition is not co-assigned with the state partition of the same number (the input
        has another partition count), so every record is repartitioned. Either way an event is
        ordered by its input position (codec/position.py), which the repartitioned record
        carries."""
        route = self.route
        dead = out.dead
        repartition = out.repartition
        destinations: set[int] = set()
        writes = out.writes_for(partition) if state is not None else {}
        apply = state.store.apply if state is not None else None
        max_future_ms = self.max_future_ms
        outcome = out.outcome(self.input_topic, partition)
        applied_ts = outcome.applied_timestamps
        invalid = ignored = late = 0
        for r in records:
            try:
                ev = parse_event(r.value, r.timestamp, max_future_ms)
            except InvalidEvent as exc:
                dead.append((r, exc.reason))
                invalid += 1
                continue
            offset = r.offset
            try:
                position = input_position(partition, offset)
            except InvalidEvent as exc:
                dead.append((r, exc.reason))
                invalid += 1
                continue
            family = ev.family
            fkey, fpart = route(family)
            if apply is not None and fpart == partition and r.key == fkey:
                stored = apply(ev, position, family)
                if stored:
                    writes[recommendation_key(family, ev.user_id)] = encode_applied(
                        ev, position, partition)
                    applied_ts.append(r.timestamp)
                elif stored is None:
                    dead.append((r, self.late(ev, partition, state)))
                    late += 1
                else:
                    ignored += 1
            else:
                group = repartition.get(fpart)
                if group is None:
                    group = repartition[fpart] = []
                group.append((fkey, encode_event(ev, r.timestamp, partition, offset)))
                destinations.add(fpart)
        outcome.applied = len(applied_ts)
        outcome.ignored += ignored
        outcome.invalid += invalid
        outcome.late += late
        for destination in destinations:
            sources = out.sources.get(destination)
            if sources is None:
                sources = out.sources[destination] = set()
            sources.add(partition)
        return outcome

    def aggregate(self, topic: str, partition: int, state: PartitionState,
                  records: Iterable[InputRecord], out: BatchOutput) -> Outcome:
        """Repartitioned events: apply each to the partition's state, ordered by the input
        position it carries (records written before it was carried: by their offset here). The
        topic is writable by anyone: a record that is not a compact event, or that belongs to
        another partition, is a dead letter."""
        dead = out.dead
        writes = out.writes_for(partition)
        apply = state.store.apply
        route = self.route
        outcome = out.outcome(topic, partition)
        applied_ts = outcome.applied_timestamps
        invalid = ignored = late = 0
        for r in records:
            try:
                ev, record_ts, source = decode_event(r.value or b"")
                position = r.offset if source is None else input_position(*source)
            except InvalidEvent as exc:  # not written by an ingest
                dead.append((r, f"bad repartition record: {exc.reason}"))
                invalid += 1
                continue
            family = ev.family
            owner = route(family)[1]
            if owner != partition:
                dead.append((r, f"repartition record of partition {owner} found on "
                                f"partition {partition}"))
                invalid += 1
                continue
            stored = apply(ev, position, family)
            if stored:
                writes[recommendation_key(family, ev.user_id)] = encode_applied(ev, position,
                                                                                partition)
                applied_ts.append(r.timestamp if record_ts is None else record_ts)
            elif stored is None:
                dead.append((LateRecord(topic, partition, r.offset, r.timestamp, r.key,
                                        encode_input(ev)), self.late(ev, partition, state)))
                late += 1
            else:
                ignored += 1
        outcome.applied = len(applied_ts)
        outcome.ignored += ignored
        outcome.invalid += invalid
        outcome.late += late
        return outcome
