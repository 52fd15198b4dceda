"""The Faust application: topics, the durable tables, the ingest and aggregate agents and the
change publisher, assembled by ``create_app``-style construction in ``SegmentStreamApp``.

Data flow (DESIGN.md): input -> ingest (validate; invalid -> DLQ) -> repartition by segment
family -> aggregate (last-writer-wins durable table + derived per-partition indexes) -> timer
publishes coalesced count changes.

Hot-path choices (see BENCHMARKS.md):
- the batched consumer (streams/consumer.py) hands whole fetched batches to ``process_batch``,
  which acks a record only once everything it produced is acknowledged by the broker, so
  delivery stays at-least-once;
- a record whose key already is its segment family key, on the partition the repartition
  would choose, is aggregated directly by the ingest agent: no needless repartition hop
  (Faust assigns the same partition numbers of co-partitioned topics to one worker);
- durable writes go straight to the changelog topic through the producer, and recovery feeds
  the changelog into the derived state directly: Faust's own table store stays empty, so a
  recommendation is held once in memory, not twice.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from typing import Any, Generic, TypeVar, cast

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from faust.tables.manager import TableManager
from faust.types import TP, EventT

from streams.consumer import install as install_batch_consumer
from streams.dead_letters import MIN_DEAD_LETTER_BYTES, dead_letter
from streams.events import Event, family_key, parse_event
from streams.exceptions import InvalidEvent
from streams.partitioner import partition_for
from streams.segments import (
    CountChange,
    FamilyKey,
    MalformedRecord,
    PartitionState,
    SegmentStat,
    contract_order,
    decode_emitted,
    encode_applied,
    record_key,
)
from streams.settings import Settings

logger = logging.getLogger(__name__)
K = TypeVar("K")

YIELD_EVERY = 400  # records handled between two yields to the event loop within a batch

_ROUTE_CACHE_MAX = 20_000
# A batch whose writes failed is retried after this back-off (doubling up to the maximum).
_RETRY_MIN_S, _RETRY_MAX_S = 0.1, 2.0
_MERGED_MEMO_MAX = 16  # merged local answers kept (each holds its partitions' memoised parts)


class _ChangelogTable(faust.Table[bytes, bytes]):
    """A table whose changelog feeds the application's derived state instead of Faust's store.

    Writes go to the changelog through ``SegmentStreamApp``. On assignment the owner reads the
    newly assigned changelog partitions itself with a plain batched consumer (Faust's own
    recovery reads about 6,000 records/s here, one task per record) and reports how far it
    read as the persisted offset, so Faust's recovery only replays what came after. Whatever
    Faust does replay is handed to the owner too; loading is last-writer-wins.
    """

    owner: SegmentStreamApp | None = None

    def __post_init__(self) -> None:
        self._read_upto: dict[int, int] = {}

    def persisted_offset(self, tp: TP) -> int | None:
        return self._read_upto.get(tp.partition)

    def remember(self, partition: int, offset: int) -> None:
        """The derived state holds this partition's changelog up to ``offset``."""
        self._read_upto[partition] = offset

    def forget(self, partition: int) -> None:
        """The derived state of this partition is gone: the next assignment reads it all."""
        self._read_upto.pop(partition, None)

    def apply_changelog_batch(self, batch: Iterable[EventT[Any]]) -> None:
        if self.owner is not None:
            for event in batch:
                msg = event.message
                self.owner.load_changelog_record(self.name, msg.partition, msg.key, msg.value)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        if self.owner is not None and self.name == "recommendations":
            self.owner.on_recovered({tp.partition for tp in active_tps})

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP],
                           newly_assigned: set[TP], generation_id: int = 0) -> None:
        if self.owner is not None:
            self.owner.on_rebalance_started()
            topic = self.changelog_topic.get_topic_name()
            active = {tp.partition for tp in self.app.assignor.assigned_actives()
                      if tp.topic == topic}
            for p in list(self._read_upto):
                if p not in active:
                    del self._read_upto[p]
            self.owner.drop_partitions(keep=active)
            retained = active & set(self.owner.partitions)
            if retained:
                # Kept across the rebalance: the derived state already holds every record of
                # these changelog partitions (the revocation flushed this worker's writes, and
                # nobody else wrote to them meanwhile), so Faust replays nothing of them.
                try:
                    ends = await self.app.consumer.highwaters(
                        *(TP(topic, p) for p in sorted(retained)))
                except Exception as exc:  # then Faust replays them: slower, as correct
                    logger.warning("changelog ends of kept partitions unknown: %r", exc)
                    ends = {}
                for tp, end in ends.items():
                    if end:
                        self._read_upto[tp.partition] = end - 1
            todo = active - set(self._read_upto) - retained
            if todo:
                # Empty changelog partitions (a new deployment) need no reader of their own.
                try:
                    ends = await self.app.consumer.highwaters(
                        *(TP(topic, p) for p in sorted(todo)))
                    todo = {tp.partition for tp, end in ends.items() if end}
                except Exception as exc:  # then every partition is read
                    logger.warning("changelog ends unknown: %r", exc)
            if todo:
                self._read_upto.update(await self.owner.fast_recover(self.name, topic, todo))
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)


class _TableManager(TableManager):
    """Faust's table manager without its fixed one-second sleep at start (it gives tables
    declared late a chance to register; ours are declared before the worker starts)."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class SegmentStreamApp:
    """One worker's Faust app and the derived state it serves."""

    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        self.partitions: dict[int, PartitionState] = {}
        self._recovering: dict[int, PartitionState] = {}
        self._routes: dict[FamilyKey, tuple[bytes, int]] = {}
        # Held while a batch is handled / while changes are published; a revocation takes
        # both, so it waits for the work in flight (two locks: the two never wait for each other).
        self._batch_lock = asyncio.Lock()
        self._publish_lock = asyncio.Lock()
        self._merged: OrderedDict[tuple[str, str, str, float],
                                  tuple[list[list[SegmentStat]], list[SegmentStat]]] = (
            OrderedDict())
        self.ready = False
        # Partitions whose durable writes failed: out of service until rebuilt (_repair).
        self._stale: set[int] = set()
        # (topic, partition) of records whose outputs failed, and the rebuild: retry times.
        self._held: _Backoff[tuple[str, int] | str] = _Backoff(_RETRY_MIN_S, _RETRY_MAX_S)
        self.processed = 0
        self.invalid = 0
        self.failed_batches = 0
        self.malformed_changelog_records = 0
        self.publications = 0  # change publisher ticks that wrote something
        self.app = faust.App(
            s.app_id,
            broker=s.kafka_url,
            store="memory://",
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            # No standbys: the derived state is rebuilt from the changelog on assignment, and
            # standby records would only be held twice.
            table_standby_replicas=0,
            web_enabled=False,
            canonical_url=s.advertised_url,
            datadir=s.data_dir or None,
            broker_session_timeout=10.0,
            broker_heartbeat_interval=1.0,
            broker_rebalance_timeout=20.0,
            # Offsets are committed every second (and at every rebalance and stop); the fetch
            # loop also stops to commit after this many acks (Faust's default, 10,000, put a
            # producer flush and a commit of 20-90 ms in the loop every ~0.3 s of a backlog).
            broker_commit_every=100_000,
            broker_commit_interval=1.0,
            producer_linger=0.005,
            producer_acks=-1,
            # A write not acknowledged in this time fails, and so does the batch that made it
            # (read again), instead of waiting up to Faust's default of 20 minutes.
            producer_request_timeout=s.produce_timeout_ms / 1000.0,
            producer_max_batch_size=512 * 1024,
            stream_buffer_maxsize=4096,
            # Bounds one fetched batch (and the memory it takes while a backlog is read). Larger
            # batches cost less per record (per-batch work; fewer durable writes, the last write
            # per recommendation per batch wins): 5,000 -> 10,000 records with 1 -> 4 MiB per
            # partition fetch, and the commits above, took the worker's CPU for 200,000 events
            # from 4.5-4.9 to 3.4-3.7 s side by side (BENCHMARKS.md).
            broker_max_poll_records=10_000,
            consumer_max_fetch_size=4 * 1024 * 1024,
            consumer_auto_offset_reset="earliest",
            table_cleanup_interval=3600.0,
            logging_config=None,
            TableManager=_TableManager,
        )
        app = self.app
        self.input_topic = app.topic(s.input_topic, key_type=bytes, value_type=bytes,
                                     key_serializer="raw", value_serializer="raw",
                                     partitions=s.partitions)
        self.by_segment = app.topic(s.repartition_topic, key_type=bytes, value_type=bytes,
                                    key_serializer="raw", value_serializer="raw",
                                    partitions=s.partitions, internal=True)
        # bytes keys and values: the tables' serializer is then "raw" (orjson is ours).
        self.recommendations = _ChangelogTable(
            app, name="recommendations", key_type=bytes, value_type=bytes,
            partitions=s.partitions, recovery_buffer_size=10_000)
        self.emitted = _ChangelogTable(
            app, name="emitted-counts", key_type=bytes, value_type=bytes,
            partitions=s.partitions, recovery_buffer_size=10_000)
        for table in (self.recommendations, self.emitted):
            table.owner = self
            app.tables.add(table)
        self._changelog = self.recommendations.changelog_topic.get_topic_name()
        self._emitted_changelog = self.emitted.changelog_topic.get_topic_name()
        # The agents subscribe the worker to the two topics; their records reach process_batch.
        app.agent(self.input_topic, name="ingest")(self._subscribe)
        app.agent(self.by_segment, name="aggregate")(self._subscribe)
        install_batch_consumer(app, (s.input_topic, s.repartition_topic), self.process_batch)
        app.timer(s.change_interval_ms / 1000.0, name="publish-changes")(self._publish_changes)
        app.timer(1.0, name="repair-partitions")(self._repair_stale)
        app.on_partitions_revoked.connect(cast(Any, self._on_partitions_revoked))
        # A graceful stop sends no revocation (Faust stops the consumer, then sends this).
        app.on_before_shutdown.connect(cast(Any, self._on_partitions_revoked))

    # -- agents ----------------------------------------------------------------------------
    def _route(self, family: FamilyKey) -> tuple[bytes, int]:
        """A segment family's key on the repartition topic and the partition it hashes to
        (memoised: computing them takes a few us, looking them up ~0.1 us)."""
        route = self._routes.get(family)
        if route is None:
            if len(self._routes) >= _ROUTE_CACHE_MAX:
                self._routes.clear()
            key = family_key(*family)
            route = self._routes[family] = (key, partition_for(key, self.settings.partitions))
        return route

    def _ingest_records(self, partition: int, state: PartitionState | None,
                        records: Iterable[Any], out: _BatchOutput) -> None:
        """Input records of one partition (aiokafka's records, timestamps in ms, in offset
        order): validate each (invalid: collected for the DLQ with the reason), then
        aggregate it here when it already sits on its segment family's partition under the
        family's key and ``state`` (the partition's, if owned) is given, else collect it for
        the repartition topic."""
        route = self._route
        invalid = out.invalid
        repartition = out.repartition
        destinations: set[int] = set()
        writes = out.writes_for(partition)
        apply = state.apply if state is not None else None
        max_future_ms = self.settings.max_future_ms
        for r in records:
            try:
                ev = parse_event(r.value, r.timestamp, max_future_ms)
            except InvalidEvent as exc:
                invalid.append((r, exc.reason))
                continue
            family = ev.family
            fkey, fpart = route(family)
            if apply is not None and fpart == partition and r.key == fkey:
                offset = r.offset
                if apply(ev, offset, family):
                    writes[record_key(family, ev.user_id)] = encode_applied(ev, offset,
                                                                            partition)
            else:
                group = repartition.get(fpart)
                if group is None:
                    group = repartition[fpart] = []
                group.append((fkey, ev.encode()))
                destinations.add(fpart)
        for destination in destinations:
            out.sources_of(destination).add(partition)

    def _aggregate_records(self, partition: int, state: PartitionState, records: Iterable[Any],
                           out: _BatchOutput) -> None:
        """Repartitioned events of one partition: apply each to the partition's state. The
        topic is writable by anyone: a record that is not our compact event, or that belongs
        to another partition, is a dead letter."""
        invalid = out.invalid
        writes = out.writes_for(partition)
        apply = state.apply
        route = self._route
        for r in records:
            try:
                ev = Event.decode(r.value or b"")
            except InvalidEvent as exc:  # not written by our ingest
                invalid.append((r, f"bad repartition record: {exc.reason}"))
                continue
            family = ev.family
            owner = route(family)[1]
            if owner != partition:
                invalid.append((r, f"repartition record of partition {owner} found on "
                                   f"partition {partition}"))
                continue
            offset = r.offset
            if apply(ev, offset, family):
                writes[record_key(family, ev.user_id)] = encode_applied(ev, offset, partition)

    async def _flush_batch(self, out: _BatchOutput) -> _Failures:
        """Send what a batch produced (dead letters, repartitioned events and the durable
        writes, one per recommendation per batch: the last one wins anyway) and wait for the
        broker to acknowledge all of it. Returns what failed: the (topic, partition) of every
        record whose output was not acknowledged, and the changelog partitions with a failed
        durable write."""
        failures = _Failures()
        waits: list[tuple[Awaitable[Any], frozenset[tuple[str, int]], int | None]] = []
        input_topic = self.settings.input_topic
        repartition_topic = self.settings.repartition_topic
        for record, reason in out.invalid:
            waits.append((self._send_dead_letter(record, reason),
                          frozenset({(record.topic, record.partition)}), None))
        self.invalid += len(out.invalid)
        for destination, records in out.repartition.items():
            sources = frozenset((input_topic, p) for p in out.sources_of(destination))
            await self._queue(repartition_topic, destination, records, sources, None, waits,
                              failures)
        for partition, writes in out.writes.items():
            if writes:
                await self._queue(self._changelog, partition, writes,
                                  frozenset({(input_topic, partition),
                                             (repartition_topic, partition)}),
                                  partition, waits, failures)
        results = await asyncio.gather(*(w for w, _, _ in waits), return_exceptions=True)
        for result, (_, sources, changelog_partition) in zip(results, waits, strict=True):
            if isinstance(result, BaseException):
                failures.add(sources, changelog_partition, result)
        return failures

    async def _queue(self, topic: str, partition: int,
                     records: list[tuple[bytes, bytes]] | dict[bytes, bytes],
                     sources: frozenset[tuple[str, int]], changelog_partition: int | None,
                     waits: list[tuple[Awaitable[Any], frozenset[tuple[str, int]], int | None]],
                     failures: _Failures) -> None:
        """Queue records for one partition; their deliveries join ``waits``, a failure to
        queue them joins ``failures``."""
        deliveries: list[asyncio.Future[Any]] = []
        try:
            await self._send_partitions(topic, {partition: records}, deliveries)
        except Exception as exc:
            failures.add(sources, changelog_partition, exc)
        waits.extend((delivery, sources, changelog_partition) for delivery in deliveries)

    async def _send_dead_letter(self, record: Any, reason: str) -> None:
        """Send one record's dead letter and wait for its acknowledgement; raises if it cannot
        be delivered. A dead letter the broker finds too large (a topic with a smaller
        ``max.message.bytes``) is sent again cut to half the size, down to
        ``MIN_DEAD_LETTER_BYTES``."""
        max_bytes = self.app.conf.producer_max_request_size
        while True:
            letter = dead_letter(record.key, record.value, reason, max_bytes=max_bytes,
                                 source=(record.topic, record.partition, record.offset))
            try:
                delivery = await self._producer().send(
                    self.settings.dlq_topic, letter.value, key=letter.key,
                    headers=list(letter.headers))
                await delivery
                return
            except (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError):
                if max_bytes <= MIN_DEAD_LETTER_BYTES:
                    raise
                max_bytes = max(MIN_DEAD_LETTER_BYTES, max_bytes // 2)

    async def process_batch(self, messages: list[Any]) -> list[Any]:
        """The batched consumer's handler (streams/consumer.py): every fetched record of the
        input and repartition topics, in partition order; returns those handled, to be acked.

        A record is handled once its outputs (durable writes, dead letter, repartitioned
        event) are acknowledged by the broker. Records whose outputs failed are not acked:
        the consumer reads them again from the committed offset, and a partition whose
        durable writes failed is rebuilt from its changelog first (its state is ahead of the
        changelog), before it handles records again.

        Runs under the batch lock, so a rebalance waits for a batch in flight. Records that
        cannot be handled here now (a rebalance has begun, or their partition is not owned)
        are not acked and the consumer seeks their partitions back to the committed offset:
        the partition's next owner, this worker or another, reads them again."""
        async with self._batch_lock:
            if not self.ready:
                return []
            if self._stale:
                await self._repair()
            out = _BatchOutput()
            broken = _Failures()
            done = []
            owned = self.partitions
            held = self._held
            waiting = False
            input_topic = self.settings.input_topic
            since_yield = 0
            for (topic, part), records in _by_partition(messages).items():
                state = owned.get(part)
                if state is None:
                    continue
                if held and held.waiting((topic, part)):
                    waiting = True  # failed lately: read again after its back-off
                    continue
                if since_yield >= YIELD_EVERY:
                    # Let requests in between the partitions of a large batch (they see the
                    # records applied so far).
                    await asyncio.sleep(0)
                    since_yield = 0
                try:
                    if topic == input_topic:
                        self._ingest_records(part, state, records, out)
                    else:
                        self._aggregate_records(part, state, records, out)
                except Exception as exc:  # a bug: hold this partition back, not the worker
                    logger.exception("handling records of %s[%d] failed", topic, part)
                    broken.broken(topic, part, exc)
                    continue
                done += records
                since_yield += len(records)
            failures = await self._flush_batch(out)
            failures.merge(broken)
            if failures:
                self._on_failed_batch(failures)
                done = [r for r in done if (r.topic, r.partition) not in failures.sources]
            if held:
                for r in done:
                    held.succeeded((r.topic, r.partition))
            self.processed += len(done)
            if not done and waiting:
                # Only records held back came: wait instead of fetching them again at once.
                await asyncio.sleep(held.next_in())
            return done

    def _on_failed_batch(self, failures: _Failures) -> None:
        """Some outputs of a batch failed: log it, hold its records back for a while (read
        again after a back-off), and mark the partitions whose durable writes failed for a
        rebuild."""
        self.failed_batches += 1
        for source in failures.sources:
            self._held.failed(source)
        logger.warning("writes of a batch failed (%s); its records of %s are read again%s",
                       failures.describe(), sorted(failures.sources),
                       f", partitions {sorted(failures.changelog_partitions)} rebuilt first"
                       if failures.changelog_partitions else "")
        for p in failures.changelog_partitions:
            if p in self.partitions or p in self._recovering:
                self.partitions.pop(p, None)
                self._recovering.pop(p, None)
                self._stale.add(p)
            for table in (self.recommendations, self.emitted):
                table.forget(p)

    async def _repair(self) -> None:
        """Rebuild the partitions whose durable writes failed from their changelogs (under the
        publish lock: no change is published from them meanwhile). On failure (the broker
        still away) they stay out of service until the next batch tries again."""
        if self._held.waiting("repair"):
            return
        stale = set(self._stale)
        async with self._publish_lock:
            try:
                for table, topic in ((self.recommendations, self._changelog),
                                     (self.emitted, self._emitted_changelog)):
                    for p, offset in (await self.fast_recover(table.name, topic, stale)).items():
                        table.remember(p, offset)
            except Exception as exc:
                for p in stale:
                    self._recovering.pop(p, None)
                self._held.failed("repair")
                logger.warning("rebuilding partitions %s failed (%r); retrying", sorted(stale),
                               exc)
                return
            self._install({p: self._recovering.pop(p) if p in self._recovering
                           else PartitionState(p) for p in stale})
            self._stale -= stale
            self._held.succeeded("repair")
        logger.warning("partitions %s rebuilt from their changelogs", sorted(stale))

    async def _subscribe(self, stream: Any) -> AsyncIterator[None]:
        """Body of the two agents, which only subscribe the worker to their topics: the batched
        consumer hands those topics' records to ``process_batch``, never to a stream."""
        async for _ in stream:  # pragma: no cover - would lose the record if it came
            raise RuntimeError("a record of the batch handler's topics reached an agent")
            yield None

    def _producer(self) -> Any:
        return cast(Any, self.app.producer)._ensure_producer()  # the AIOKafkaProducer

    async def _send_partitions(
            self, topic: str,
            by_partition: Mapping[int, list[tuple[bytes, bytes]] | dict[bytes, bytes]],
            futures: list[asyncio.Future[Any]] | None = None,
    ) -> list[asyncio.Future[Any]]:
        """Queue records, per partition ``(key, value)`` pairs (a list, or a dict of values by
        key), in this order per partition, in the producer as whole record batches
        (``AIOKafkaProducer.send_batch``: ``send`` costs a future and an accumulator lookup
        per record). Returns the batches' delivery futures, appended to ``futures`` when
        given (so that the caller has those queued before a failure to queue the rest)."""
        producer = self._producer()
        futures = [] if futures is None else futures
        for partition, items in by_partition.items():
            if not items:
                continue
            batch = producer.create_batch()
            append = batch.append
            for key, value in (items.items() if isinstance(items, dict) else items):
                if append(key=key, value=value, timestamp=None) is None:  # full
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    append = batch.append
                    append(key=key, value=value, timestamp=None)
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.sleep(0)  # thousands of appends per partition: let others in
        return futures

    # -- change publisher ------------------------------------------------------------------
    async def _publish_changes(self) -> None:
        """Timer body. An exception escaping a Faust timer crashes the whole app, so every
        failure is logged here and the changes are retried at the next tick."""
        if self.app.rebalancing or not self.ready:
            return
        # Under the publish lock: a rebalance waits until what is being published is recorded
        # as published (and flushed), so the partition's next owner knows of it.
        async with self._publish_lock:
            if not self.ready:
                return
            taken = []
            for partition, state in list(self.partitions.items()):
                changes = state.take_changes(self.settings.watch_thresholds)
                if changes or state.unconfirmed:
                    taken.append((partition, state, changes))
                # After a burst a tick holds thousands of changes: let HTTP requests and
                # batches in between partitions (tens of ms each) instead of after all.
                await asyncio.sleep(0)
            if not taken:
                return
            try:
                await self._emit(taken)
                self.publications += 1
            except Exception:
                logger.exception("publishing %d count changes failed; retrying",
                                 sum(len(changes) for _, _, changes in taken))
                for _, state, changes in taken:
                    state.dirty.update((c.program_id, c.segment_basis, c.segment_basis_id,
                                        c.action_type) for c in changes)

    async def _on_partitions_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """Faust's revocation signal (sent after it stopped the flow and flushed), and its
        shutdown signal: stop handling records and publishing changes, wait for the batch or
        publication in flight, record what was published as published, and flush what it
        produced, before the partitions can move."""
        self.ready = False
        async with self._batch_lock, self._publish_lock:
            try:
                await self._confirm({p: (st, {}) for p, st in self.partitions.items()})
            except Exception:  # then the next owner publishes those changes once more
                logger.exception("recording published changes as published failed")
            await self.app.producer.flush()

    async def _confirm(self, pending: dict[int, tuple[PartitionState, dict[bytes, bytes]]]
                       ) -> None:
        """Write, per partition, ``records`` (emitted key -> value: the tick's intents) and
        the partition's published-but-unrecorded changes as published ([count, partition]),
        except where an intent of the same key supersedes that (an intent names the previous
        count, published); wait for the broker's acknowledgement. Confirmations are given
        back to their partitions if the write fails."""
        confirmations = {p: st.take_confirmations() for p, (st, _) in pending.items()}
        records: dict[int, dict[bytes, bytes]] = {}
        for partition, (_, intents) in pending.items():
            out = records[partition] = {}
            for key, count in confirmations[partition].items():
                if key not in intents:
                    out[key] = orjson.dumps([count, partition])
            out.update(intents)
        try:
            await _all_delivered(await self._send_partitions(self._emitted_changelog, records))
        except BaseException:
            for partition, (state, _) in pending.items():
                for key, count in confirmations[partition].items():
                    state.unconfirmed.setdefault(key, count)
            raise

    async def _emit(self, taken: list[tuple[int, PartitionState, list[CountChange]]]) -> None:
        """Publish the changes of some partitions write-ahead: first record each as about to
        be published ([count, partition, previous]; with the previous tick's changes recorded
        as published, acknowledged by the broker), then publish them all; the next tick, a
        revocation or a stop records them as published ([count, partition]). A worker that dies in
        between leaves the intent as the last record: the partition's next owner publishes
        that change again (the same one if the count has not moved since), so the last change
        of a segment always reaches the topic."""
        pending: dict[int, tuple[PartitionState, dict[bytes, bytes]]] = {}
        for partition, state, changes in taken:
            pending[partition] = (state, {
                c.emitted_key: orjson.dumps([c.user_count, partition, c.previous_user_count])
                for c in changes})
            await asyncio.sleep(0)  # between partitions (see _publish_changes)
        await self._confirm(pending)
        # Keyed by program_id, on the partition Kafka's default partitioner picks for it.
        topic = self.settings.changes_topic
        partitions = sorted(await self._producer().partitions_for(topic))
        now_ms = int(time.time() * 1000)
        events: dict[int, list[tuple[bytes, bytes]]] = {}
        routes: dict[str, tuple[list[tuple[bytes, bytes]], bytes]] = {}  # few programs
        for _, _, changes in taken:
            for c in changes:
                route = routes.get(c.program_id)
                if route is None:
                    key = c.program_id.encode()
                    partition = partitions[partition_for(key, len(partitions))]
                    route = routes[c.program_id] = (events.setdefault(partition, []), key)
                route[0].append((route[1], change_payload(c, now_ms)))
            await asyncio.sleep(0)
        await _all_delivered(await self._send_partitions(topic, events))
        for _, state, changes in taken:
            for c in changes:
                state.commit_change(c)

    # -- rebalance / recovery --------------------------------------------------------------
    def on_rebalance_started(self) -> None:
        self.ready = False
        self._stale.clear()  # not kept across the rebalance: it rebuilds them if they stay
        self._held.clear()

    async def _repair_stale(self) -> None:
        """Timer body: rebuild stale partitions even when no batch comes to do it."""
        if self._stale and self.ready and not self.app.rebalancing:
            async with self._batch_lock:
                if self._stale and self.ready:
                    await self._repair()

    def drop_partitions(self, keep: set[int]) -> None:
        """Forget the derived state of partitions this worker no longer owns."""
        for p in list(self.partitions):
            if p not in keep:
                del self.partitions[p]
        for p in list(self._recovering):
            if p not in keep:
                del self._recovering[p]

    def _target(self, partition: int) -> PartitionState:
        state = self.partitions.get(partition)
        if state is None:
            state = self._recovering.get(partition)
            if state is None:
                state = self._recovering[partition] = PartitionState(partition, rebuilding=True)
        return state

    def load_changelog_record(self, table: str, partition: int, key: bytes | None,
                              value: bytes | None) -> None:
        """Recovery: one changelog record into the (re)built derived state. A record that is
        not what this product writes (anyone can write to the topic) is skipped and counted."""
        if value is None or key is None:
            return
        try:
            if table == "recommendations":
                self._target(partition).load_durable(key, value, partition)
            else:
                count, previous = decode_emitted(value, partition)
                self._target(partition).load_emitted(key, count, previous)
        except MalformedRecord as exc:
            self.malformed_changelog_records += 1
            n = self.malformed_changelog_records
            if n <= 10 or n % 1000 == 0:
                logger.warning("skipped a malformed %s changelog record of partition %d (%s; %d "
                               "so far)", table, partition, exc, self.malformed_changelog_records)

    async def fast_recover(self, table: str, topic: str, partitions: set[int]) -> dict[int, int]:
        """Read changelog partitions from the start to their current end in large batches;
        return, per partition, the last offset read."""
        started = time.monotonic()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers, enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024, fetch_max_wait_ms=100)
        await consumer.start()
        read: dict[int, int] = {}
        n = 0
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
                batch = await consumer.getmany(*pending, timeout_ms=500, max_records=50_000)
                for tp, msgs in batch.items():
                    for m in msgs:
                        if m.offset < ends[tp]:
                            self.load_changelog_record(table, tp.partition, m.key, m.value)
                    n += len(msgs)
            read = {tp.partition: ends[tp] - 1 for tp in tps if ends[tp] > 0}
        finally:
            await consumer.stop()
        logger.info("read %d %s changelog records of %d partitions in %.2fs", n, table,
                    len(partitions), time.monotonic() - started)
        return read

    def on_recovered(self, active: set[int]) -> None:
        """Drop revoked partitions; publish the ones rebuilt from the changelogs."""
        self.drop_partitions(keep=active)
        recovered = {p: st for p, st in self._recovering.items() if p in active}
        self._recovering.clear()
        for p in active:
            if p not in self.partitions and p not in recovered:
                recovered[p] = PartitionState(p)  # an empty partition
        self._install(recovered)
        self.ready = True

    def _install(self, recovered: dict[int, PartitionState]) -> None:
        """Put rebuilt partitions in service."""
        n = 0
        for state in recovered.values():
            state.finish_rebuild()
            state.mark_unsettled(self.settings.watch_thresholds)
            n += state.recommendations()
        self.partitions.update(recovered)
        if recovered:
            logger.info("rebuilt %d partitions (%d recommendations)", len(recovered), n)
            # The rebuilt state is long-lived and acyclic (freed by reference counting when a
            # partition is dropped): keep it out of the garbage collector's full passes, which
            # would otherwise walk every recommendation now and then.
            gc.freeze()

    # -- queries ---------------------------------------------------------------------------
    def local_query(self, program_id: str, segment_type: str, segment_basis: str,
                    min_weight: float) -> tuple[list[SegmentStat], list[int]]:
        """Segments of one program on this worker's active partitions, in contract order (a
        shared list: not to be modified), and those partitions.

        Each partition memoises its part until an event changes that program and basis; the
        merged, sorted list is memoised while every part is the same memoised list."""
        covered = sorted(self.partitions)
        parts = [self.partitions[p].query(program_id, segment_type, segment_basis, min_weight)
                 for p in covered]
        key = (program_id, segment_type, segment_basis, min_weight)
        hit = self._merged.get(key)
        if (hit is not None and len(hit[0]) == len(parts)
                and all(a is b for a, b in zip(hit[0], parts, strict=True))):
            self._merged.move_to_end(key)
            return hit[1], covered
        rows = contract_order([row for part in parts for row in part])
        self._merged[key] = (parts, rows)
        while len(self._merged) > _MERGED_MEMO_MAX:
            self._merged.popitem(last=False)
        return rows, covered

    def owners(self) -> dict[str, list[int]]:
        """Worker URL -> active partitions, from the group assignment."""
        meta = self.app.assignor.table_metadata(self._changelog)
        return {str(url): sorted(tps.get(self._changelog, [])) for url, tps in meta.items()}


class _BatchOutput:
    """What handling a batch produces, to be sent (``_flush_batch``)."""

    __slots__ = ("invalid", "repartition", "sources", "writes")

    def __init__(self) -> None:
        # Durable writes per changelog partition: record key -> value (the last one wins).
        self.writes: dict[int, dict[bytes, bytes]] = {}
        self.invalid: list[tuple[Any, str]] = []  # record, reason
        # Repartitioned events per destination partition, and the input partitions they
        # come from (each one's events in its order).
        self.repartition: dict[int, list[tuple[bytes, bytes]]] = {}
        self.sources: dict[int, set[int]] = {}

    def writes_for(self, partition: int) -> dict[bytes, bytes]:
        writes = self.writes.get(partition)
        if writes is None:
            writes = self.writes[partition] = {}
        return writes

    def sources_of(self, destination: int) -> set[int]:
        sources = self.sources.get(destination)
        if sources is None:
            sources = self.sources[destination] = set()
        return sources


class _Backoff(Generic[K]):
    """When each key may be tried again after failures: a delay doubling from ``first_s`` up
    to ``max_s``, forgotten on success."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self._first_s = first_s
        self._max_s = max_s
        self._delay: dict[K, float] = {}
        self._until: dict[K, float] = {}

    def __bool__(self) -> bool:
        return bool(self._until)

    def failed(self, key: K) -> None:
        delay = min(self._max_s, max(self._first_s, 2 * self._delay.get(key, 0.0)))
        self._delay[key] = delay
        self._until[key] = time.monotonic() + delay

    def succeeded(self, key: K) -> None:
        self._delay.pop(key, None)
        self._until.pop(key, None)

    def waiting(self, key: K) -> bool:
        until = self._until.get(key)
        return until is not None and time.monotonic() < until

    def next_in(self) -> float:
        """Seconds until the first key may be tried again (0 if one may be now)."""
        return max(0.0, min(self._until.values(), default=0.0) - time.monotonic())

    def clear(self) -> None:
        self._delay.clear()
        self._until.clear()


class _Failures:
    """The outputs of a batch that the broker did not acknowledge."""

    __slots__ = ("changelog_partitions", "errors", "sources")

    def __init__(self) -> None:
        self.sources: set[tuple[str, int]] = set()  # (topic, partition) of their records
        self.changelog_partitions: set[int] = set()  # with a failed durable write
        self.errors: list[BaseException] = []

    def __bool__(self) -> bool:
        return bool(self.sources)

    def add(self, sources: frozenset[tuple[str, int]], changelog_partition: int | None,
            error: BaseException) -> None:
        self.sources |= sources
        if changelog_partition is not None:
            self.changelog_partitions.add(changelog_partition)
        self.errors.append(error)

    def broken(self, topic: str, partition: int, error: BaseException) -> None:
        """Handling the records of ``topic[partition]`` raised: its state may hold part of
        them without their durable writes, so the partition is rebuilt too."""
        self.add(frozenset({(topic, partition)}), partition, error)

    def merge(self, other: _Failures) -> None:
        self.sources |= other.sources
        self.changelog_partitions |= other.changelog_partitions
        self.errors += other.errors

    def describe(self) -> str:
        kinds = sorted({type(e).__name__ for e in self.errors})
        return f"{len(self.errors)} failed: {', '.join(kinds)}; first: {self.errors[0]!r}"


async def _all_delivered(deliveries: list[asyncio.Future[Any]]) -> None:
    """Wait for every delivery; raise the first failure (after all of them are done, so that
    no failure goes unretrieved)."""
    for result in await asyncio.gather(*deliveries, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


def _by_partition(messages: Iterable[Any]) -> dict[tuple[str, int], list[Any]]:
    """Records grouped per (topic, partition), in arrival order."""
    grouped: dict[tuple[str, int], list[Any]] = {}
    for msg in messages:
        group = grouped.get((msg.topic, msg.partition))
        if group is None:
            group = grouped[(msg.topic, msg.partition)] = []
        group.append(msg)
    return grouped


def change_payload(c: CountChange, now_ms: int) -> bytes:
    return orjson.dumps({
        "program_id": c.program_id, "segment_type": c.segment_type,
        "segment_basis": c.segment_basis, "segment_basis_id": c.segment_basis_id,
        "action_type": c.action_type, "name": c.name, "min_weight": c.min_weight,
        "user_count": c.user_count, "previous_user_count": c.previous_user_count,
        "strength": c.strength, "ts": now_ms,
    })
