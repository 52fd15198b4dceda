"""A Faust consumer that hands whole fetched batches of the product's topics to one handler.

Faust delivers every record through the same per-record path: a task per record
(``wait_first(callback(message), ...)`` in ``Consumer._drain_messages``), the conductor's
decode into an ``Event``, a channel queue, the agent's stream iterator and ``take_events``.
That is about half of a worker's time (BENCHMARKS.md). This consumer keeps everything else of
Faust (group membership, the co-partitioned assignment, table recovery, offsets, commits,
flow control on rebalance) and only replaces the delivery of records of the topics a
:class:`BatchHandler` names: each fetched batch of them goes to the handler in one call, in
partition order, and the records it returns are acked as if a stream had acked them. Records
of any other topic (table changelogs during recovery) take Faust's path unchanged.

At-least-once holds as with agents: a record is acked only after the handler returned (its
durable writes are queued in the producer), and Faust flushes the producer before it commits
an offset.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from time import monotonic
from typing import Any

from aiokafka import TopicPartition
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

# Faust's driver hard-codes fetch_max_wait_ms=1500. Requests on a broker connection are
# answered in order, so every metadata, offset or commit request queued behind a fetch that
# waits for data (a paused or idle partition) waited up to 1.5 s: ~3 s of each worker start
# (Faust's recovery asks for offsets twice). A shorter long-poll costs a few idle fetches/s.
FETCH_MAX_WAIT_MS = 100

# Seconds between checks for partitions whose commits cannot advance (see _stuck_partitions):
# a hole must persist over two checks in a row.
STALL_CHECK_S = 5.0

# Records (aiokafka's ConsumerRecord) per partition -> the partitions whose records it handled.
BatchHandler = Callable[[dict[TP, list[Any]]], Awaitable[list[TP]]]


def install(app: Any, topics: Iterable[str], handler: BatchHandler) -> None:
    """Make ``app``'s consumer (created when its worker starts) a :class:`BatchConsumer` that
    hands the records of ``topics`` to ``handler``; it returns the records it handled."""
    app.transport.Consumer = BatchConsumer
    app.batch_topics = frozenset(topics)
    app.batch_handler = handler


class _ConsumerThread(AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by AIOKafkaConsumer.start()
        return consumer


class BatchConsumer(AIOKafkaDriverConsumer):
    """See the module docstring and :func:`install`.

    Offsets of the handler's topics are tracked against *seek epochs*: the epoch changes with
    every seek (Faust's seek to committed offsets after each rebalance, a rewind) and every
    assignment. A batch whose fetch or handling overlapped a seek is never trusted to say
    where the partition stands: it is dropped, or acked without moving the read offset, and
    the partitions are sought back to their committed offsets, from where everything not
    committed is read again (state updates are idempotent). Missing offsets are taken as
    gaps (control records of transactional producers) only within one fetched batch, or
    right after the last record handled in the same epoch, never across a seek: a fetch that
    raced a seek once made 2,110 unprocessed records look like a gap, and they were
    committed (found by the crash test).
    """

    _epoch = 0
    _holes: dict[TP, tuple[int, int]] = {}  # replaced per check, never mutated
    # Fetched ranges and what became of them, for the warning of _stuck_partitions: the
    # latest ones, and the first ones of each partition since the last assignment.
    _trace: deque[tuple[Any, ...]] = deque(maxlen=200)  # replaced at start
    _first_batches: dict[TP, list[tuple[Any, ...]]] = {}  # replaced at each assignment

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        self._epoch += 1
        try:
            await super().perform_seek()
        finally:
            self._epoch += 1

    async def seek(self, partition: Any, offset: int) -> None:
        self._epoch += 1
        await super().seek(partition, offset)

    async def seek_wait(self, partitions: Any) -> None:
        self._epoch += 1
        try:
            await super().seek_wait(partitions)
        finally:
            self._epoch += 1

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._epoch += 1
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any, generation_id: int = 0) -> None:
        self._epoch += 1
        self._first_batches = {}
        await super().on_partitions_assigned(assigned, generation_id)

    async def _reseek(self, tps: set[Any]) -> None:
        """Seek the assigned partitions of ``tps`` back to their committed offsets (asked of the
        broker; the beginning where none is committed), as Faust's ``perform_seek`` does for
        all partitions when it fetched while its flow was stopped."""
        consumer = self._thread._ensure_consumer()

        async def seek_back(tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
            # In the consumer's thread, like every other call on the aiokafka consumer.
            positions: dict[TopicPartition, int | None] = {}
            assigned = consumer.assignment()
            for tp in tps:
                if tp not in assigned:
                    continue
                offset = await consumer.committed(tp)
                if offset is not None and offset > 0:
                    consumer.seek(tp, offset)
                else:
                    await consumer.seek_to_beginning(tp)
                    offset = None
                positions[tp] = offset
            return positions

        self._epoch += 1
        try:
            positions = await self._thread.call_thread(
                seek_back, [TopicPartition(tp.topic, tp.partition) for tp in tps])
        except Exception as exc:  # a rebalance is under way: its own seek follows
            self.log.info("seek back to committed offsets deferred: %r", exc)
            return
        finally:
            self._epoch += 1
        for atp, offset in positions.items():
            tp = TP(atp.topic, atp.partition)
            self._read_offset[tp] = offset
            if offset is not None:
                self._committed_offset[tp] = offset

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        # Faust records the offsets of a commit as committed even when the commit failed; the
        # driver fails silently when the group "already rebalanced". That commit's request
        # may have waited through the whole rebalance, so the stale offset lands after the
        # revocation cleared the partition's bookkeeping, or even after the seek to the
        # committed offsets that ends the rebalance: the partition then believes an offset
        # above the broker's is committed, drops the acks of the records in between as
        # already committed, and its commits stop for good (the crash test stalled this
        # way). A failed commit leaves the committed offset unknown instead: the rebalance
        # under way seeks every partition to the broker's committed offset and sets it.
        did_commit: bool = await super()._commit_offsets(offsets, start_new_transaction)
        if not did_commit:
            for tp, offset in offsets.items():
                if self._committed_offset.get(tp) == offset:
                    self._committed_offset.pop(tp, None)
        return did_commit

    def _new_offset(self, tp: TP) -> int | None:
        # Faust computes the offset to commit from the acked offsets of the partition; acks
        # below the committed offset are stale (recorded before the partition was revoked
        # and assigned again) and must not count: with the committed offset unknown for a
        # moment (a rebalance clears it) they could make it commit a lower offset, after
        # which the partition's later acks never join up with it and its commits stop.
        committed = self._committed_offset.get(tp)
        acked = self._acked.get(tp)
        if committed is not None and acked and min(acked) < committed:
            stale = [o for o in acked if o < committed]
            acked[:] = [o for o in acked if o >= committed]
            self._acked_index[tp].difference_update(stale)
        result: int | None = super()._new_offset(tp)
        return result

    def _stuck_partitions(self, topics: frozenset[str]) -> set[TP]:
        """Partitions of ``topics`` whose commits cannot advance: records acked above the
        committed offset with a hole below them that no gap fills, unchanged since the
        previous check. The batches of a partition are handled and acked in order, so a hole
        that persists means records that were read and never acked (Faust's bookkeeping
        lost them in a rebalance race): without this, the partition would never commit
        again. Its next owner re-reads them anyway; this worker does it now."""
        stuck = set()
        seen, self._holes = self._holes, {}
        for tp, acked in self._acked.items():
            committed = self._committed_offset.get(tp)
            if tp.topic not in topics or not acked or committed is None:
                continue
            lowest = min(acked)
            if lowest - committed <= 1:  # committable (Faust's rule)
                continue
            gaps = self._gap.get(tp)
            if gaps and gaps.overlaps(committed, committed + 2):
                continue
            hole = (committed, lowest)
            self._holes[tp] = hole
            if seen.get(tp) == hole:
                history = self._history(tp)
                self.log.warning("offsets %d..%d of %s were read but never acked (%d records "
                                 "acked after them): reading them again; its last batches:\n%s",
                                 committed, lowest - 1, tp, len(acked), history)
                stuck.add(tp)
        return stuck

    def _history(self, tp: TP) -> str:
        def line(entry: tuple[Any, ...]) -> str:
            t, _, first, last, e0, e1, outcome, committed = entry
            return (f"  {t:.3f} {first}..{last} epoch {e0}->{e1} {outcome}, "
                    f"committed {committed}")

        since = [line(e) for e in self._first_batches.get(tp, [])]
        latest = [line(e) for e in self._trace if e[1] == tp][-10:]
        return "\n".join(["first batches since the assignment:", *since,
                          "latest batches:", *latest])

    def _ack_handled(self, tp: TP, offsets: list[int]) -> None:
        """Ack the handled records of one partition (ascending offsets) at once: what
        ``Consumer.ack`` does per message, for records that were never tracked as
        messages."""
        with ack_lock:
            committed = self._committed_offset[tp]
            if committed is not None and offsets[0] < committed:
                offsets = [o for o in offsets if o >= committed]
            acked_index = self._acked_index[tp]
            if acked_index.isdisjoint(offsets):
                new = offsets
            else:
                new = [o for o in offsets if o not in acked_index]
            if new:
                acked_index.update(new)
                self._acked[tp].extend(new)
                self._n_acked += len(new)
            notify(self._waiting_for_ack)

    async def _drain_messages(self, fetcher: Any) -> None:
        # Faust's loop (faust/transport/consumer.py, Consumer._drain_messages and getmany),
        # with the records of the handler's topics handed over per fetch, as aiokafka
        # returned them, instead of one ConsumerMessage and one task at a time.
        handler: BatchHandler = getattr(self.app, "batch_handler")  # noqa: B009 (set by install)
        topics: frozenset[str] = getattr(self.app, "batch_topics")  # noqa: B009
        callback = self.callback
        to_message = self._to_message
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        track_end_offset = self.app.monitor.track_tp_end_offset
        commit_every = self._commit_every
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        # Per partition of the handler's topics: (epoch, offset after the last record handled).
        expected: dict[TP, tuple[int, int]] = {}
        next_check = monotonic() + STALL_CHECK_S
        self._trace = deque(maxlen=200)
        self._first_batches = {}
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                batch: dict[TP, list[Any]] = {}
                gaps: list[tuple[TP, int, int]] = []
                generation = self.app.consumer_generation_id
                epoch = self._epoch
                await self.sleep(0)
                records: Any = None
                active: Any = None
                if not self.should_stop:
                    records, active = await self._wait_next_records(1.0)
                if records is not None and not self.should_stop and not self.flow_active:
                    # As Faust's getmany: the flow stopped while fetching (a rebalance began):
                    # seek back to the committed offsets.
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        self.log.warning("exception performing seek when flow not active %r",
                                         exc)
                    records = None
                if records and not self.should_stop:
                    for atp, recs in records.items():
                        if (self.app.consumer_generation_id != generation
                                or not self.flow_active):
                            break  # as Faust's getmany; the batch is dropped below
                        tp = TP(atp.topic, atp.partition)
                        if not recs or (active is not None and tp not in active
                                        and tp not in self._buffered_partitions):
                            continue
                        track_end_offset(tp, self.highwater(tp))
                        r_offset = read_offset[tp]
                        if tp.topic in topics:
                            if r_offset is not None and recs[0].offset < r_offset:
                                recs = [r for r in recs if r.offset >= r_offset]  # read already
                                if not recs:
                                    continue
                            first = recs[0].offset
                            if acks_enabled_for(tp.topic):
                                seen = expected.get(tp)
                                if seen is not None and seen[0] == epoch and first > seen[1]:
                                    gaps.append((tp, seen[1], first - 1))
                                if recs[-1].offset - first + 1 != len(recs):
                                    prev = first
                                    for r in recs:
                                        if r.offset - prev > 1:
                                            gaps.append((tp, prev + 1, r.offset - 1))
                                        prev = r.offset
                            batch[tp] = recs
                            continue
                        # Any other topic (changelogs while Faust recovers): Faust's path.
                        for record in recs:
                            offset = record.offset
                            if r_offset is not None and offset < r_offset:
                                continue
                            if (r_offset and offset - r_offset > 1
                                    and acks_enabled_for(tp.topic)):
                                await self._add_gap(tp, r_offset + 1, offset)
                            await self.wait_first(callback(to_message(tp, record)),
                                                  self.suspend_flow.wait())
                            read_offset[tp] = r_offset = offset
                unset_flag(CONSUMER_FETCHING)
                if batch:
                    # What became of each fetched range (for the stall warning below).
                    outcome = ("handled" if self._epoch == epoch
                               and self.app.consumer_generation_id == generation
                               and self.flow_active else "dropped")
                    trace, first = self._trace, self._first_batches
                    for tp, recs in batch.items():
                        entry = (monotonic(), tp, recs[0].offset, recs[-1].offset, epoch,
                                 self._epoch, outcome, self._committed_offset.get(tp))
                        trace.append(entry)
                        since = first.setdefault(tp, [])
                        if len(since) < 20:
                            since.append(entry)
                if not batch:
                    pass
                elif (self._epoch != epoch or self.app.consumer_generation_id != generation
                        or not self.flow_active):
                    # Fetched across a seek or a rebalance: where these records stand is not
                    # known. Nothing of them is acked; reading resumes at the committed offsets.
                    expected.clear()
                    if self.flow_active:
                        await self._reseek(set(batch))
                else:
                    done = await handler(batch)
                    if self._epoch != epoch:
                        # A seek or a rebalance came while the batch was handled. Its records
                        # are not acked: a revocation has cleared the partitions' bookkeeping,
                        # and acks recorded now would be stale in the next generation (Faust
                        # would commit from them). They are read again from the committed
                        # offsets (the seek that came did that, or the one ending the
                        # rebalance will, or this one), and handling them again is idempotent.
                        expected.clear()
                        if self.flow_active:
                            await self._reseek(set(batch))
                    else:
                        # Acks first, with no await in between: the epoch is still this one.
                        for tp in done:
                            if acks_enabled_for(tp.topic):
                                self._ack_handled(tp, [r.offset for r in batch[tp]])
                        for tp in done:
                            last = batch[tp][-1].offset
                            read_offset[tp] = last
                            expected[tp] = (epoch, last + 1)
                        handled = set(done)
                        for tp, start, stop in gaps:
                            if tp in handled and self._epoch == epoch:
                                await self._add_gap(tp, start, stop)
                        if len(done) < len(batch):
                            # Records left (their partition's state is not ready here): read
                            # again.
                            expected.clear()
                            if self.flow_active:
                                await self._reseek(set(batch) - handled)
                    await asyncio.sleep(0)  # let the web server and timers in between batches
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                now = monotonic()
                if now >= next_check:
                    next_check = now + STALL_CHECK_S
                    stuck = self._stuck_partitions(topics)
                    if stuck and self.flow_active:
                        expected.clear()
                        await self._reseek(stuck)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


def offsets_report(app: Any) -> str:
    """A worker's consumer bookkeeping, one line per assigned partition: the offset Faust last
    committed, the last offset read, acked offsets not yet committed and gaps, the fetch
    position and whether the partition is paused."""
    consumer = app.consumer
    lines = [f"offsets: generation {app.consumer_generation_id}, "
             f"flow {'active' if consumer.flow_active else 'stopped'}, "
             f"rebalancing {app.rebalancing}"]
    try:
        subscription = consumer._thread._consumer._subscription.subscription
        assignment = subscription.assignment if subscription is not None else None
    except AttributeError:  # not started, or not the aiokafka driver
        assignment = None
    for tp in sorted(consumer.assignment()):
        acked = consumer._acked.get(tp) or []
        gaps = consumer._gap.get(tp)
        position = None
        if assignment is not None:
            try:
                position = assignment.state_value(tp).position
            except Exception:  # no position yet
                position = None
        lines.append(
            f"  {tp.topic}[{tp.partition}]: committed {consumer._committed_offset.get(tp)}, "
            f"read {consumer._read_offset.get(tp)}, acked {len(acked)}"
            + (f" ({min(acked)}..{max(acked)})" if acked else "")
            + (f", gaps {sorted((g.begin, g.end) for g in gaps)[:3]}" if gaps else "")
            + f", position {position}"
            + (", paused" if tp in consumer._paused_partitions else ""))
    return "\n".join(lines)
