"""Standby replicas (contract section 6): warm copies of other workers' partitions.

Where: for each partition, the first ``replicas`` workers other than its owner in that
partition's rendezvous order of the members' URLs, skipping those that keep their share of
copies already (``holders``). Every worker computes the same from the group's assignment, so
a worker that needs a standby copy knows whom to ask; a join, a leave or a new owner moves few
copies. (Faust's own standbys apply their records a buffer at a time and one task per record,
and Faust does not tell the members where they are.)

How: one consumer without a group reads the standby partitions' two changelogs. A new standby
partition is read from its start in bulk, its indexes built once it is complete (then it is
*ready*: it answers queries), and then followed as its owner writes. A partition the group
hands to its standby holder needs no rebuild: the recovery takes the warm state
(``take``) and Faust replays only what came after it.

Its lag, for an answer from it: the records of its input and repartition partitions that its
owner has not committed (runtime/group_lag.py), plus the changelog records the copy has not
read yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.codec.exceptions import MalformedRecord
from streams.codec.names import TABLES, Names
from streams.domain.partition import PartitionState
from streams.domain.rows import SegmentRow
from streams.runtime.group_lag import GroupLag
from streams.runtime.kafka_clients import start_consumer
from streams.runtime.partitions import PartitionRegistry
from streams.runtime.recovery import LOAD_SLICE, READ_BATCH, load_record, loaded_slice

logger = logging.getLogger(__name__)

LOOKUP_TIMEOUT_S = 5.0


# No member keeps more than this times the mean number of copies, where the others can take
# them: copies cost memory like owned partitions, and workers are sized alike.
COPY_LOAD_FACTOR = 1.25


def holders(owners: Mapping[str, Iterable[int]], replicas: int) -> dict[int, list[str]]:
    """Per partition, the workers keeping a standby copy of it: the first ``replicas`` members
    other than its owner in the partition's own order of the members (rendezvous hashing),
    skipping members that already keep their share of copies (bounded load). A join, a leave
    or a partition that changes owner moves few copies: the others stay where they are, warm,
    across rebalances. Changing this rule changes where a rolling upgrade finds copies."""
    key = tuple(sorted((url, tuple(sorted(set(ps)))) for url, ps in owners.items()))
    return {p: list(urls) for p, urls in _holders(key, replicas).items()}


@functools.lru_cache(maxsize=8)  # computed once per assignment, asked at every failover read
def _holders(owners: tuple[tuple[str, tuple[int, ...]], ...],
             replicas: int) -> dict[int, tuple[str, ...]]:
    members = [url for url, _ in owners]
    owner = {p: url for url, partitions in owners for p in partitions}  # a duplicate: last URL
    k = max(0, min(replicas, len(members) - 1))
    cap = math.ceil(COPY_LOAD_FACTOR * len(owner) * k / len(members)) if members else 0
    load: Counter[str] = Counter()
    out: dict[int, tuple[str, ...]] = {}
    for p in sorted(owner):
        ranked = sorted((m for m in members if m != owner[p]), key=lambda m: (_rank(p, m), m))
        picked = set([m for m in ranked if load[m] < cap][:k])
        picked.update([m for m in ranked if m not in picked][:k - len(picked)])
        load.update(picked)
        out[p] = tuple(m for m in ranked if m in picked)
    return out


def _rank(partition: int, member: str) -> bytes:
    """The member's place for this partition: the same in every process and release."""
    return hashlib.blake2b(f"{partition}|{member}".encode(), digest_size=8).digest()


@dataclass
class _Standby:
    state: PartitionState
    positions: dict[str, int] = field(default_factory=dict)  # table -> next offset to read
    ends: dict[str, int] | None = None  # table -> where its first read ends (None: not known)
    ready: bool = False  # read to those ends once, indexes built: it answers queries


class StandbyReplicas:
    def __init__(self, registry: PartitionRegistry, names: Names,
                 wanted: Callable[[], set[int]],
                 consumer: Callable[[], AIOKafkaConsumer], group_lag: GroupLag,
                 skipped: Callable[[str, int, MalformedRecord], None]) -> None:
        self.registry = registry
        self.names = names
        self._wanted = wanted  # this worker's standby partitions in the current assignment
        self._make_consumer = consumer
        self._group_lag = group_lag
        self._skipped = skipped
        self.standbys: dict[int, _Standby] = {}
        # Held while records are applied to the copies; the recovery takes it to move one.
        self.lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._tables = {names.changelog_topic(t): t for t in TABLES}
        self._tail: AIOKafkaConsumer | None = None
        self._lookup: AIOKafkaConsumer | None = None  # for the end offsets at a revocation
        self._written: dict[int, dict[str, int]] = {}  # partition -> table -> end, at revocation
        self._generation = 0  # changes of the copies
        self._highwaters: dict[tuple[str, int], int] = {}  # (table, partition) -> last fetch's

    # -- what the worker does at a rebalance ------------------------------------------------------
    async def released(self, registry: PartitionRegistry, still_member: bool) -> None:
        """Partitions revoked, everything this worker wrote flushed: note where its partitions'
        changelogs end. Until the group assigns them again nobody else writes there, so a
        state this worker gives up is a ready copy up to exactly those offsets. Not so if
        the worker is no ``still_member`` of the group (its session expired): others may have
        owned its partitions meanwhile, so its states are dropped as usual."""
        self._written = {}
        partitions = sorted(registry.active)
        if not partitions:
            return
        if not still_member:
            logger.warning("the group no longer knew this worker: its states are not kept as "
                           "standby copies")
            return
        tps = [TopicPartition(self.names.changelog_topic(t), p) for p in partitions
               for t in TABLES]
        try:
            if self._lookup is None:
                self._lookup = self._make_consumer()
                await start_consumer(self._lookup)
            ends = await asyncio.wait_for(self._lookup.end_offsets(tps), LOOKUP_TIMEOUT_S)
        except Exception as exc:  # the copies of these partitions start from scratch instead
            logger.warning("changelog ends unknown at the revocation (%r)", exc)
            await self._close_lookup()
            return
        for tp, end in ends.items():
            self._written.setdefault(tp.partition, {})[self._tables[tp.topic]] = end

    async def rebalanced(self, registry: PartitionRegistry, assigned: set[int]) -> None:
        """``assigned`` are this worker's partitions now (called before the registry forgets
        the others): a state it gives up becomes the ready copy of a partition it keeps a
        standby of; the ready copies of partitions it now owns become their states (rebuilt
        no more: Faust replays what came after them); the copies kept are those of the new
        assignment."""
        wanted = self._wanted() - assigned
        written, self._written = self._written, {}
        async with self.lock:
            for p in sorted(set(registry.active) - assigned):
                ends = written.get(p)
                if p in wanted and ends is not None and len(ends) == len(TABLES):
                    self.standbys[p] = _Standby(registry.active.pop(p), dict(ends), dict(ends),
                                                ready=True)
                    logger.info("partition %d kept as a standby copy", p)
            for p in sorted(assigned - set(registry.active)):
                taken = self.take(p)
                if taken is None:
                    continue
                state, positions = taken
                registry.recovering[p] = state
                for table, position in positions.items():
                    if position:
                        registry.remember(table, p, position - 1)
                logger.info("partition %d taken over from its standby copy", p)
        await self.reassign(wanted)

    async def reassign(self, partitions: set[int]) -> None:
        """This worker's standby partitions are now ``partitions``: drop the others' copies,
        start reading the new ones."""
        async with self.lock:
            for p in set(self.standbys) - partitions:
                del self.standbys[p]
            for p in partitions - set(self.standbys):
                self.standbys[p] = _Standby(self.registry.new_state(p, rebuilding=True))
            self._moved()

    def take(self, partition: int) -> tuple[PartitionState, dict[str, int]] | None:
        """A ready copy, to become the partition's active state (the caller holds ``lock``),
        and the next offset to read of each changelog; None if there is none."""
        standby = self.standbys.get(partition)
        if standby is None or not standby.ready:
            return None
        del self.standbys[partition]
        self._moved()
        return standby.state, dict(standby.positions)

    def _moved(self) -> None:
        """The copies changed: a fetch under way is dropped, the reader seeks anew."""
        self._generation += 1
        self._changed.set()

    # -- queries -----------------------------------------------------------------------------------
    def ready(self) -> list[int]:
        return sorted(p for p, s in self.standbys.items() if s.ready)

    def warming(self) -> list[int]:
        """The copies this worker keeps that are not ready yet."""
        return sorted(p for p, s in self.standbys.items() if not s.ready)

    def held(self, partitions: Iterable[int]) -> tuple[list[tuple[int, PartitionState]], int]:
        """The ready copies among ``partitions`` (partition, state) and their lag."""
        held: list[tuple[int, PartitionState]] = []
        lag = 0
        for p in sorted(set(partitions)):
            standby = self.standbys.get(p)
            if standby is not None and standby.ready:
                held.append((p, standby.state))
                lag += self._lag(p, standby)
        return held, lag

    def query(self, program_id: str, segment_type: str, segment_basis: str, min_weight: float,
              partitions: Iterable[int]) -> tuple[list[SegmentRow], list[int], int]:
        """Rows of the ready copies among ``partitions`` (each part in the contract's order
        only within its partition), the partitions they cover, and their lag."""
        held, lag = self.held(partitions)
        rows = [row for _, state in held
                for row in state.query(program_id, segment_type, segment_basis, min_weight)]
        return rows, [p for p, _ in held], lag

    def _lag(self, partition: int, standby: _Standby) -> int:
        lag = self._group_lag.of(partition)
        for table in TABLES:
            end = self._highwaters.get((table, partition))
            if end is None and standby.ends is not None:
                end = standby.ends.get(table)
            if end is not None:
                lag += max(0, end - standby.positions.get(table, 0))
        return lag

    def recommendations(self) -> int:
        return sum(s.state.recommendations() for s in self.standbys.values())

    # -- the reader --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Follow the standby partitions' changelogs until cancelled."""
        try:
            while True:
                if not self.standbys:
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 1.0)
                    continue
                try:
                    await self._step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the broker away: the copies wait, then catch up
                    logger.warning("reading standby changelogs failed (%r); retrying", exc)
                    await self._close()
                    await asyncio.sleep(1.0)
        finally:
            await self._close()
            await self._close_lookup()

    async def _step(self) -> None:
        if self._tail is None:
            self._tail = self._make_consumer()
            await start_consumer(self._tail)
            self._changed.set()
        consumer = self._tail
        # Taken before the seeks: copies that change while the reader is pointed at them (the
        # awaits of _assign) make this fetch, from the old copies' positions, be dropped.
        generation = self._generation
        if self._changed.is_set():
            self._changed.clear()
            await self._assign(consumer)
        batch = await consumer.getmany(timeout_ms=200, max_records=READ_BATCH)
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is not None:
                self._highwaters[(self._tables[tp.topic], tp.partition)] = end
        async with self.lock:
            if generation != self._generation:
                return  # fetched for copies that changed since (read again from their positions)
            for tp, records in batch.items():
                standby = self.standbys.get(tp.partition)
                table = self._tables[tp.topic]
                if standby is None or not records:
                    continue
                for i, r in enumerate(records):
                    load_record(standby.state, table, tp.partition, r.key, r.value,
                                self._skipped, r.offset, r.headers)
                    if i % LOAD_SLICE == LOAD_SLICE - 1:
                        await loaded_slice()  # (the lock held: the copies stay as they are)
                standby.positions[table] = records[-1].offset + 1
                # A copy ages as its owner does; the owner writes the tombstones.
                if standby.state.store.expire():
                    standby.state.store.forgotten.clear()
            for p, standby in list(self.standbys.items()):
                if not standby.ready and standby.ends is not None and all(
                        standby.positions.get(t, 0) >= end for t, end in standby.ends.items()):
                    for _ in standby.state.settle_steps():
                        await asyncio.sleep(0)
                    # Settled as a copy; a takeover settles it again with what came since.
                    standby.state.settled = False
                    standby.ready = True
                    logger.info("standby of partition %d ready (%d recommendations)", p,
                                standby.state.recommendations())

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        """Follow exactly the standby partitions' changelogs, each from where its copy is."""
        async with self.lock:
            wanted = {p: s for p, s in self.standbys.items()}
        tps = [TopicPartition(self.names.changelog_topic(t), p) for p in sorted(wanted)
               for t in TABLES]
        consumer.assign(tps)
        new = [tp for tp in tps if self._tables[tp.topic] not in wanted[tp.partition].positions]
        if new:
            await consumer.seek_to_beginning(*new)
        for tp in tps:
            position = wanted[tp.partition].positions.get(self._tables[tp.topic])
            if position is not None:
                consumer.seek(tp, position)
        unknown = [tp for tp in tps if wanted[tp.partition].ends is None]
        if unknown:
            ends = await consumer.end_offsets(unknown)
            async with self.lock:
                for tp in unknown:
                    standby = self.standbys.get(tp.partition)
                    if standby is not None and standby is wanted[tp.partition]:
                        if standby.ends is None:
                            standby.ends = {}
                        standby.ends[self._tables[tp.topic]] = ends[tp]

    async def _close(self) -> None:
        if self._tail is not None:
            consumer, self._tail = self._tail, None
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _close_lookup(self) -> None:
        if self._lookup is not None:
            consumer, self._lookup = self._lookup, None
            with contextlib.suppress(Exception):
                await consumer.stop()
