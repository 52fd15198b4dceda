"""Recovery: partition states rebuilt from the two changelogs, on assignment and after failed
writes.

On every rebalance each table (faust_ext/tables.py) hands its newly assigned changelog partitions
here, inside the assignment callback, which must return at once (the whole group's join waits
for it). Partitions this worker keeps need nothing (their state holds every record: the
revocation flushed this worker's writes, and nobody else wrote to them meanwhile); a ready
standby copy becomes the state and Faust's recovery replays what came after it; every other
partition with a non-empty changelog is queued for a background rebuild (runtime/rebuilds.py)
and Faust is told it holds its changelogs already, so its recovery (which resumes every
partition at once) does not wait for it. Whatever is read goes through ``load``, which checks
every record: anyone can write to a changelog topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.codec.durable import (
    RecordHeaders,
    decode_emitted,
    decode_emitted_key,
    decode_expected_offset,
    decode_recommendation,
    decode_recommendation_key,
)
from streams.codec.exceptions import MalformedRecord
from streams.codec.names import RECOMMENDATIONS, TABLES, Names
from streams.domain.partition import PartitionState
from streams.runtime.batches import Backoff
from streams.runtime.kafka_clients import start_consumer
from streams.runtime.metrics import RuntimeMetrics
from streams.runtime.partitions import PartitionRegistry

logger = logging.getLogger(__name__)

Record = tuple[bytes | None, bytes | None, int, RecordHeaders]  # key, value, offset, headers
# partition, key, value, offset, headers
OnRecord = Callable[[int, bytes | None, bytes | None, int, RecordHeaders], None]
Highwaters = Callable[[str, set[int]], Awaitable[dict[int, int]]]  # topic, partitions -> ends


class Standbys(Protocol):
    async def rebalanced(self, registry: PartitionRegistry, assigned: set[int]) -> None:
        """``assigned`` are this worker's partitions now (the others still in the registry):
        warm copies of them become their states (in ``registry.recovering``, their changelog
        offsets remembered); states given up may become copies; the copies kept are those of
        the new assignment."""


class Rebuilder(Protocol):
    """The background rebuilds (runtime/rebuilds.py), as the recovery drives them."""

    def assign(self, assigned: set[int], cold: Iterable[int]) -> None: ...
    def holds(self, partition: int) -> bool: ...
    @property
    def partitions(self) -> set[int]: ...
    def tell_faust(self, table: str, ends: dict[int, int]) -> None: ...
    def faust_offset(self, table: str, partition: int) -> int | None: ...


class Reader(Protocol):
    async def read(self, topic: str, partitions: set[int], on_record: OnRecord
                   ) -> dict[int, int]:
        """Hand every record of the partitions, from their start to their current end, to
        ``on_record``; return, per partition, the last offset read."""

    async def end_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Each (topic, partition)'s current end (the offset its next record gets)."""

    async def read_slices(self, starts: dict[tuple[str, int], int], limit: int
                          ) -> dict[tuple[str, int], tuple[list[Record], int]]:
        """At most ``limit`` records (key, value) in all of the (topic, partition)s, each from
        its offset in ``starts`` on; per partition those read and the offset to read next
        (past compacted-away offsets too)."""


# Records fetched at once (aiokafka unpacks them in one go).
READ_BATCH = 500
# Records decoded and applied without giving the event loop back, so that probes, answers
# and heartbeats are served through a long rebuild: a probe waits for a slice or two, so each
# stays a small part of contract §12's bound (BENCHMARKS.md, probes).
LOAD_SLICE = 125


async def loaded_slice() -> None:
    """Between slices of a rebuild: what was loaded is long-lived and acyclic, so it leaves
    the garbage collector's generations (else its young and middle collections walk
    hundreds of thousands of just-loaded objects: pauses of 0.36 s at 1 M recommendations),
    then the event loop gets a turn."""
    gc.freeze()
    await asyncio.sleep(0)


class ChangelogReader:
    """Reads changelog partitions from their start to their current end in large batches."""

    def __init__(self, consumer: Callable[[], AIOKafkaConsumer]) -> None:
        self._make_consumer = consumer
        # For slices (the background rebuilds): one consumer kept between them, so that a
        # slice going on where the last one ended needs no seek, and so no new fetch.
        self._slices: AIOKafkaConsumer | None = None
        self._sliced: set[TopicPartition] = set()

    async def _slice_consumer(self) -> AIOKafkaConsumer:
        if self._slices is None:
            consumer = self._make_consumer()
            await start_consumer(consumer)
            self._slices, self._sliced = consumer, set()
        return self._slices

    async def end_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        consumer = await self._slice_consumer()
        try:
            ends = await consumer.end_offsets([TopicPartition(t, p) for t, p in partitions])
        except Exception:
            await self.close()
            raise
        return {(tp.topic, tp.partition): int(end) for tp, end in ends.items()}

    async def read_slices(self, starts: dict[tuple[str, int], int], limit: int
                          ) -> dict[tuple[str, int], tuple[list[Record], int]]:
        consumer = await self._slice_consumer()
        tps = {TopicPartition(t, p): start for (t, p), start in starts.items()}
        try:
            if set(tps) != self._sliced:
                consumer.assign(list(tps))
                self._sliced = set(tps)
                for tp, start in tps.items():
                    consumer.seek(tp, start)
            else:
                for tp, start in tps.items():
                    if await consumer.position(tp) != start:
                        consumer.seek(tp, start)
            batch = await consumer.getmany(*tps, timeout_ms=500, max_records=limit)
            out = {}
            for tp, start in tps.items():
                records = [(m.key, m.value, m.offset, m.headers) for m in batch.get(tp, [])
                           if m.offset >= start]
                out[(tp.topic, tp.partition)] = (records, await consumer.position(tp))
            return out
        except Exception:
            await self.close()
            raise

    async def close(self) -> None:
        if self._slices is not None:
            consumer, self._slices, self._sliced = self._slices, None, set()
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def read(self, topic: str, partitions: set[int], on_record: OnRecord
                   ) -> dict[int, int]:
        """Hand every record to ``on_record``; return, per partition, the last offset read."""
        consumer = self._make_consumer()
        await start_consumer(consumer)
        try:
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if ends[tp] > 0}
            while pending:
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
                if not pending:
                    break
                batch = await consumer.getmany(*pending, timeout_ms=500,
                                               max_records=READ_BATCH)
                for tp, msgs in batch.items():
                    end = ends[tp]
                    for i, m in enumerate(msgs):
                        if m.offset < end:
                            on_record(tp.partition, m.key, m.value, m.offset, m.headers)
                        if i % LOAD_SLICE == LOAD_SLICE - 1:
                            await loaded_slice()
                await loaded_slice()  # heartbeats, answers: a rebuild takes many batches
            return {tp.partition: ends[tp] - 1 for tp in tps if ends[tp] > 0}
        finally:
            await consumer.stop()


@dataclass
class RecoveryStats:
    malformed_records: int = 0  # changelog records skipped


class Recovery:
    def __init__(self, registry: PartitionRegistry, reader: Reader, names: Names,
                 highwaters: Highwaters, metrics: RuntimeMetrics | None = None,
                 standbys: Standbys | None = None, rebuilds: Rebuilder | None = None) -> None:
        """``rebuilds``: the background rebuilds; by default its own, reading with ``reader``
        (the worker passes one that resumes the partitions it puts in service)."""
        self.registry = registry
        self.reader = reader
        self.names = names
        self.highwaters = highwaters
        self.metrics = metrics or RuntimeMetrics()
        self.standbys = standbys
        self.stats = RecoveryStats()
        self.retry: Backoff[str] = Backoff()
        if rebuilds is None:
            from streams.runtime.rebuilds import Rebuilds  # (it imports this module)
            rebuilds = Rebuilds(registry, reader, names, self.skipped, metrics=self.metrics)
        self.rebuilds = rebuilds

    # -- what the tables ask -------------------------------------------------------------------
    def persisted_offset(self, table: str, partition: int) -> int | None:
        if self.rebuilds.holds(partition):
            return self.rebuilds.faust_offset(table, partition)
        return self.registry.persisted_offset(table, partition)

    def load(self, table: str, partition: int, key: bytes | None, value: bytes | None,
             offset: int | None = None, headers: RecordHeaders | None = None) -> None:
        """One changelog record into the (re)built state; ``offset``: of a record Faust's
        recovery replays (after what was read here), remembered as read too. Not for a
        partition rebuilt in the background: that rebuild reads every record itself."""
        if offset is not None and self.rebuilds.holds(partition):
            return
        load_record(self.registry.target(partition), table, partition, key, value,
                    self.skipped, offset, headers)
        if offset is not None:
            self.registry.remember(table, partition, offset)

    def skipped(self, table: str, partition: int, error: MalformedRecord) -> None:
        """A changelog record that is not what this product writes: skipped and counted."""
        self.stats.malformed_records += 1
        self.metrics.malformed_records.inc()
        n = self.stats.malformed_records
        if n <= 10 or n % 1000 == 0:
            logger.warning("skipped a malformed %s changelog record of partition %d (%s; %d so "
                           "far)", table, partition, error, n)

    async def on_rebalance(self, table: str, assigned: set[int]) -> None:
        """``table``'s changelog partitions ``assigned`` to this worker by a new assignment
        (inside the assignment callback: nothing here reads a changelog). Called for each
        table, the recommendations first."""
        registry = self.registry
        registry.begin_rebalance()
        if table == RECOMMENDATIONS:  # once per rebalance (the first table), for both tables
            self.metrics.rebalances.inc()
            if self.standbys is not None:
                await self.standbys.rebalanced(registry, assigned)
            registry.keep_only(assigned)
            self.rebuilds.assign(assigned, await self._cold(assigned))
        registry.keep_only(assigned)
        topic = self.names.changelog_topic(table)
        kept = assigned & set(registry.active)
        held = assigned & self.rebuilds.partitions
        looked_up = kept | held
        if looked_up:
            try:
                ends = await self.highwaters(topic, looked_up)
            except Exception as exc:  # then Faust replays them: slower, as correct
                logger.warning("changelog ends of kept partitions unknown: %r", exc)
                ends = {}
            for p, end in ends.items():
                if end and p in kept:
                    registry.remember(table, p, end - 1)
            self.rebuilds.tell_faust(table, {p: e for p, e in ends.items() if p in held})

    async def _cold(self, assigned: set[int]) -> set[int]:
        """The partitions of ``assigned`` that need a rebuild from their changelogs: not kept,
        not taken over from a copy, not being rebuilt already, changelogs not both empty."""
        registry = self.registry
        cold = {p for p in assigned - set(registry.active) - self.rebuilds.partitions
                if not (p in registry.recovering
                        and not registry.recovering[p].store.rebuilding)}
        if not cold:
            return cold
        non_empty: set[int] = set()
        try:
            for table in TABLES:
                ends = await self.highwaters(self.names.changelog_topic(table), cold)
                non_empty |= {p for p, end in ends.items() if end}
        except Exception as exc:  # then every one is rebuilt (an empty one in no time)
            logger.warning("changelog ends unknown: %r", exc)
            return cold
        return non_empty

    async def on_recovered(self, table: str, assigned: set[int]) -> None:
        """Faust's recovery is over (it calls this for each table, once every table's
        changelogs are read): serve, once the states it brought up to date are settled (the
        partitions rebuilt in the background join one by one)."""
        if table == RECOMMENDATIONS:
            await self.registry.finish_recovery_in_steps(assigned)

    # -- after failed writes -------------------------------------------------------------------
    async def repair_stale(self) -> None:
        """Timer body: rebuild stale partitions even when no batch comes to do it."""
        registry = self.registry
        if registry.stale and registry.serving:
            async with registry.fence.batch:
                if registry.stale and registry.serving:
                    await self.repair()

    async def repair(self) -> None:
        """Rebuild the stale partitions from their changelogs (inside the publication fence:
        nothing is published from them meanwhile; the caller holds the batch fence). If it
        fails (the broker still away) they stay out of service until the next try."""
        registry = self.registry
        if not registry.stale or self.retry.waiting("repair"):
            return
        stale = set(registry.stale)
        async with registry.fence.publish:
            try:
                for table in TABLES:
                    for p, offset in (await self._read(table, stale)).items():
                        registry.remember(table, p, offset)
            except Exception as exc:
                registry.abort_repair(stale)
                self.retry.failed("repair")
                logger.warning("rebuilding partitions %s failed (%r); retrying", sorted(stale),
                               exc)
                return
            if not await registry.settle_in_steps(
                    registry.recovering[p] for p in stale if p in registry.recovering):
                registry.abort_repair(stale)
                return
            registry.finish_repair(stale)
            self.retry.succeeded("repair")
        logger.warning("partitions %s rebuilt from their changelogs", sorted(stale))

    async def _read(self, table: str, partitions: set[int]) -> dict[int, int]:
        started = time.monotonic()
        n = 0

        def on_record(partition: int, key: bytes | None, value: bytes | None, offset: int,
                      headers: RecordHeaders) -> None:
            nonlocal n
            n += 1
            load_record(self.registry.target(partition), table, partition, key, value,
                        self.skipped, offset, headers)

        read = await self.reader.read(self.names.changelog_topic(table), partitions, on_record)
        logger.info("read %d %s changelog records of partitions %s in %.2fs", n, table,
                    sorted(partitions), time.monotonic() - started)
        return read


def load_record(state: PartitionState, table: str, partition: int, key: bytes | None,
                value: bytes | None,
                skipped: Callable[[str, int, MalformedRecord], None],
                offset: int | None = None, headers: RecordHeaders | None = None) -> None:
    """One changelog record of ``table`` (at ``offset``, with ``headers``) into ``state``; a
    record that is not what this product writes goes to ``skipped``."""
    if key is None:
        return
    try:
        if table == RECOMMENDATIONS:
            if value is None:  # a tombstone: a forgotten recommendation
                k = decode_recommendation_key(key)
                state.store.load_tombstone(k.family, k.user_id)
                return
            k, v = decode_recommendation(key, value, partition)
            state.store.load((k.program_id, k.segment_basis, k.basis_id, k.action_type),
                             k.user_id, v.weight, v.in_history, v.ts, v.offset, v.name)
            return
        if value is None:  # a tombstone: a count published at 0
            segment, count, previous = decode_emitted_key(key), 0, None
        else:
            segment, count, previous = decode_emitted(key, value, partition)
        expected = decode_expected_offset(headers)
        if offset is not None and expected is not None and expected != offset:
            state.ledger.load_unsure(segment)  # written by an owner that had been replaced
        else:
            state.ledger.load(segment, count, previous)
    except MalformedRecord as exc:
        skipped(table, partition, exc)


def consumer_factory(**config: Any) -> Callable[[], AIOKafkaConsumer]:
    """Consumers for the changelog reader and the standby copies: no group. A fetch response
    is read and parsed in one step of the event loop, so its size bounds how long a probe
    waits during a rebuild, and large ones stay alive with their records (BENCHMARKS, probes)."""
    def make() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=1024 * 1024,
                                fetch_max_bytes=8 * 1024 * 1024, fetch_max_wait_ms=100,
                                **config)
    return make

