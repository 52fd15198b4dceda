"""A Faust consumer that hands whole fetched batches of some topics to one handler.

Written against faust-streaming 0.15.3 and aiokafka 0.14.0 (faust_ext/__init__.py lists every
private name used here; tests/unit/runtime/test_faust_ext.py fails when an upgrade moves one).

Faust delivers every record through the same per-record path: a task per record
(``wait_first(callback(message), ...)`` in ``Consumer._drain_messages``), the conductor's
decode into an ``Event``, a channel queue, the agent's stream iterator. This consumer keeps
everything else of Faust (group membership, the co-partitioned assignment, table recovery,
offsets, commits, flow control on rebalance) and only replaces the delivery of records of the
topics a :class:`BatchHandler` names: each fetched batch of them goes to the handler in one
call, in partition order, as aiokafka fetched them (no ``ConsumerMessage`` per record), and
the records it returns are acked in bulk with the bookkeeping of a stream's acks. Records of
any other topic (table changelogs during recovery) take Faust's path unchanged.

At-least-once: a record is acked only after the handler returned it (its outputs are
acknowledged by the broker by then).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

logger = logging.getLogger(__name__)

# Faust's driver hard-codes fetch_max_wait_ms=1500. Requests on a broker connection are answered
# in order, so every request queued behind a fetch waiting for data (metadata, offsets, commits,
# at worker start too) waits that long; a short long-poll costs a few idle fetches a second.
FETCH_MAX_WAIT_MS = 100

# Takes the fetched records of the handler's topics as aiokafka returned them (its
# ``ConsumerRecord``s: timestamps in ms), in partition order; returns those it handled.
BatchHandler = Callable[[list[Any]], Awaitable[list[Any]]]


# Whether a partition of the handler's topics stays paused (topic, partition): its state is
# being rebuilt in the background (runtime/rebuilds.py).
Held = Callable[[str, int], bool]


def install(app: Any, topics: Iterable[str], handler: BatchHandler,
            held: Held = lambda topic, partition: False) -> None:
    """Make ``app``'s consumer (created when its worker starts) a :class:`BatchConsumer` that
    hands the records of ``topics`` to ``handler``; it returns the records it handled. Faust
    pauses every assigned partition at a rebalance and resumes them all once its recovery is
    over: partitions ``held`` stay paused until :func:`resume` is called for them."""
    app.transport.Consumer = BatchConsumer
    app.batch_topics = frozenset(topics)
    app.batch_handler = handler
    app.batch_held = held


def resume(app: Any, partition: int) -> None:
    """Read the handler's topics' partition ``partition`` again (if assigned and no longer
    held): its state is in service. Fetching resumes at the position Faust's recovery sought
    it to, the committed offset."""
    consumer = app.consumer
    topics = consumer._batch_topics
    consumer.resume_partitions({tp for tp in consumer.assignment()
                                if tp.topic in topics and tp.partition == partition})


class _ConsumerThread(AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by AIOKafkaConsumer.start()
        return consumer

    def verify_event_path(self, now: float, tp: Any) -> None:
        # Faust's commit livelock check reads the partition's fetch position, which aiokafka
        # asserts is set; a partition sought to its beginning has none until the reset is done
        # (in this thread, while the check runs in the app's): nothing to check meanwhile.
        consumer = self._consumer
        if consumer is not None:
            subscription = consumer._subscription.subscription
            assignment = subscription.assignment if subscription is not None else None
            if assignment is not None:
                state = assignment.state_value(TopicPartition(tp.topic, tp.partition))
                if state is None or not state.has_valid_position:
                    return
        super().verify_event_path(now, tp)

    async def on_thread_stop(self) -> None:
        # A stop during a rebalance cancels the assignment callback's calls into this thread
        # (the method queue stops first); aiokafka's stop() awaits the coordination task that
        # waits on that callback and re-raises its CancelledError. Mode's thread would then die
        # without telling the app it shut down, and the worker's stop would wait for mode's
        # shutdown_timeout or until killed. Finish the consumer's close instead.
        try:
            await super().on_thread_stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this thread itself is cancelled, not a callback
            logger.info("the consumer stopped during a rebalance: its assignment was cancelled")
            await finish_close(self._consumer)

    async def on_partitions_assigned(self, assigned: Any, generation_id: int = 0) -> None:
        # aiokafka 0.14 stops heartbeating from the rejoin until the assignment callback has
        # returned (GroupCoordinator.ensure_active_group), and the callback rebuilds the
        # assigned partitions: past the session timeout the group drops the member, which
        # then forgets what it rebuilt, rejoins, rebuilds... Heartbeats go on meanwhile, from
        # this (the consumer's) thread, whose loop only waits for the callback.
        self._ensure_consumer()._coordinator._start_heartbeat_task()
        await super().on_partitions_assigned(assigned, generation_id)


async def finish_close(consumer: Any) -> None:
    """What aiokafka's ``AIOKafkaConsumer.stop`` does after its coordination task ended, for
    a stop that raised there: leave the group (others rebalance now, not after the session
    timeout) and close the fetcher and the connections. Best effort: the worker is stopping."""
    if consumer is None:
        return
    try:
        coordinator = consumer._coordinator
        if coordinator is not None:
            await coordinator._stop_heartbeat_task()
            await coordinator._stop_commit_offsets_refresh_task()
            await coordinator._maybe_leave_group()
        if consumer._fetcher is not None:
            await consumer._fetcher.close()
        await consumer._client.close()
    except Exception as exc:  # (a broker gone meanwhile: the process exits anyway)
        logger.warning("the consumer's close after a cancelled rebalance failed: %r", exc)


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
    races a seek makes unprocessed records look like a gap, and they would be committed
    (RELIABILITY.md, offsets).
    """

    _epoch = 0
    # Per partition of the handler's topics: the offset after the last record it handled.
    _handled_next: dict[Any, int] | None = None
    _assigning: asyncio.Future[None] | None = None  # the assignment callback under way

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def resume_partitions(self, tps: Iterable[Any]) -> None:
        # Faust's recovery resumes every assigned partition at its end: those whose state is
        # still being rebuilt stay paused (their records would not be handled anyway).
        held: Held = getattr(self.app, "batch_held")  # noqa: B009 (set by install)
        topics = self._batch_topics
        super().resume_partitions({tp for tp in tps
                                   if not (tp.topic in topics and held(tp.topic, tp.partition))})

    def _to_message(self, tp: Any, record: Any) -> Any:
        # Called by Faust's getmany for every fetched record. The handler's records stay
        # aiokafka's own (no ``ConsumerMessage`` each, ~a tenth of a worker's time): they are
        # not delivered to streams, and the drain loop acks them in bulk.
        if tp.topic in self._batch_topics:
            return record
        return super()._to_message(tp, record)

    async def getmany(
            self, timeout: float,  # noqa: ASYNC109 (Faust's signature)
    ) -> AsyncIterator[tuple[Any, Any]]:
        """Faust's ``getmany`` (faust/transport/consumer.py) with the same checks (flow
        stopped: seek back to committed offsets; a new generation or a stopped flow ends the
        fetch; only active or buffered partitions), but a partition's records come in offset
        order one partition after another, not round-robin across partitions (whole fetches
        go to the handler, which groups them per partition anyway), and the high-water mark
        is tracked once per partition, not per record: the two cost a tenth of the loop."""
        records, active_partitions = await self._wait_next_records(timeout)
        if records is None or self.should_stop:
            return
        generation_id = self.app.consumer_generation_id
        if not self.flow_active:
            self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
            try:
                await self.perform_seek()
            except Exception as ex:
                self.log.warning(f"exception performing seek when flow not active {ex}")
            return
        to_message = self._to_message
        track_end_offset = self.app.monitor.track_tp_end_offset
        buffered = self._buffered_partitions
        app = self.app
        for tp, tp_records in records.items():
            if not (active_partitions is None or tp in active_partitions or tp in buffered):
                continue
            if not self.flow_active or app.consumer_generation_id != generation_id:
                return
            track_end_offset(tp, self.highwater(tp))
            for record in tp_records:
                if not self.flow_active or app.consumer_generation_id != generation_id:
                    return
                yield tp, to_message(tp, record)

    @property
    def _batch_topics(self) -> frozenset[str]:
        topics: frozenset[str] = getattr(self.app, "batch_topics")  # noqa: B009 (set by install)
        return topics

    def _ack_offsets(self, tp: Any, offsets: list[int]) -> None:
        """Faust's ``ack`` for handled records of one partition at once, with the same
        bookkeeping: offsets at or past the committed one, each once."""
        committed = self._committed_offset[tp]
        acked_index = self._acked_index[tp]
        with ack_lock:
            new = [o for o in offsets
                   if (committed is None or o >= committed) and o not in acked_index]
            if new:
                acked_index.update(new)
                self._acked[tp].extend(new)
                self._n_acked += len(new)
            notify(self._waiting_for_ack)

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        """Faust's commit, minus its belief in a commit that failed: Faust records the offsets
        as committed even when the broker refused them (a commit racing a rebalance), so a
        partition whose first commit failed, given back to this worker, is read again from
        the beginning with every ack below that belief dropped, and is never committed
        (RELIABILITY.md, rebalances and recovery). Nor does it see a seek that overlapped the
        commit (a rebalance's, a rewind): it records the offsets it attempted over the
        broker's that the seek set, whether or not its consumer thread still sent them (it
        drops partitions no longer assigned); those partitions are sought back to, and
        record, the broker's committed offsets."""
        before = {tp: self._committed_offset.get(tp) for tp in offsets}
        epoch = self._epoch
        did_commit: bool = await super()._commit_offsets(offsets, start_new_transaction)
        if self._epoch != epoch:
            raced = raced_commit(self._committed_offset, offsets)
            if raced:
                logger.info("a seek overlapped the commit of %s: sought back to the broker's "
                            "committed offsets", sorted(raced))
                await self._reseek(raced)
        elif not did_commit:
            undo_failed_commit(self._committed_offset, before, offsets)
        return did_commit

    async def perform_seek(self) -> None:
        self._epoch += 1
        try:
            await super().perform_seek()
            await self._seek_uncommitted()
        finally:
            self._epoch += 1

    async def _seek_uncommitted(self) -> None:
        """Faust's seek to the committed offsets leaves a partition the broker has none for
        where its consumer was (aiokafka seeks only those with one): records dropped before
        the rebalance (a fetch across a seek) would not be read again, and their acks, popped
        at the revocation, would not say which were handled. The assigned partitions of the
        handler's topics without one are read again from their beginning, which is recorded
        as their committed offset."""
        tps = [tp for tp in self.assignment()
               if tp.topic in self._batch_topics and self._committed_offset.get(tp) is None]
        if not tps:
            return
        consumer = self._thread._ensure_consumer()

        async def to_beginning(tps: list[TopicPartition]) -> dict[TopicPartition, int]:
            assigned = consumer.assignment()
            tps = [tp for tp in tps if tp in assigned]
            if not tps:
                return {}
            await consumer.seek_to_beginning(*tps)
            found: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
            return found

        try:
            found = await self._thread.call_thread(
                to_beginning, [TopicPartition(tp.topic, tp.partition) for tp in tps])
        except Exception as exc:  # (a rebalance under way: its own seek comes here again)
            logger.warning("partitions %s not sought to their beginning (%r): none of them is "
                           "committed until the next seek", sorted(tps), exc)
            return
        for atp, offset in found.items():
            tp = TP(atp.topic, atp.partition)
            self._read_offset[tp] = None
            if self._committed_offset.get(tp) is None:
                self._committed_offset[tp] = offset

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
        if self._handled_next:
            for tp in revoked:
                self._handled_next.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any, generation_id: int = 0) -> None:
        self._epoch += 1
        # In a task of its own, so that a stop cancels it (on_stop): the callback rebuilds
        # state and waits on services the stop has already stopped, and the consumer thread's
        # stop waits for it (until mode's shutdown timeout, then the worker is killed).
        self._assigning = asyncio.ensure_future(
            super().on_partitions_assigned(assigned, generation_id))
        try:
            await self._assigning
        finally:
            self._assigning = None

    async def on_stop(self) -> None:
        if self._assigning is not None:
            logger.info("stopping during a rebalance: its assignment is cancelled")
            self._assigning.cancel()
        await super().on_stop()

    async def _reseek(self, tps: set[Any]) -> None:
        """Seek the assigned partitions of ``tps`` back to their committed offsets (asked of the
        broker; the beginning where none is committed), as Faust's ``perform_seek`` does for
        all partitions when it fetched while its flow was stopped."""
        consumer = self._thread._ensure_consumer()

        async def seek_back(tps: list[TopicPartition]
                            ) -> dict[TopicPartition, tuple[int | None, int]]:
            # In the consumer's thread, like every other call on the aiokafka consumer. Per
            # partition: the committed offset (None: the beginning) and where reading starts.
            positions: dict[TopicPartition, tuple[int | None, int]] = {}
            assigned = consumer.assignment()
            for tp in tps:
                if tp not in assigned:
                    continue
                offset = await consumer.committed(tp)
                if offset is not None and offset > 0:
                    consumer.seek(tp, offset)
                    positions[tp] = (offset, offset)
                else:
                    await consumer.seek_to_beginning(tp)
                    positions[tp] = (None, (await consumer.beginning_offsets([tp]))[tp])
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
        for atp, (offset, start) in positions.items():
            tp = TP(atp.topic, atp.partition)
            self._read_offset[tp] = offset
            self._committed_offset[tp] = start  # (none committed: the beginning)

    async def _drain_messages(self, fetcher: Any) -> None:
        # Faust's loop (faust/transport/consumer.py, Consumer._drain_messages), with the
        # records of the handler's topics collected per fetch instead of delivered one by one.
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        commit_every = self._commit_every
        # Per partition of the handler's topics: (epoch, offset after the last record handled).
        expected: dict[Any, tuple[int, int]] = {}
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                fetch = await self._fetch(expected)
                if fetch.batch:
                    await self._handle(fetch, expected)
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
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
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _fetch(self, expected: dict[Any, tuple[int, int]]) -> _Fetch:
        """One fetch: the records of the handler's topics collected (with the gaps between
        them), those of other topics delivered on Faust's path."""
        self.diag.set_flag(CONSUMER_FETCHING)
        fetch = _Fetch(self.app.consumer_generation_id, self._epoch)
        topics = self._batch_topics
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        await self.sleep(0)
        if not self.should_stop:
            async for tp, message in self.getmany(timeout=1.0):
                offset = message.offset
                if tp.topic not in topics:
                    # Any other topic (changelogs while Faust recovers): Faust's path.
                    r_offset = read_offset[tp]
                    if r_offset is not None and offset < r_offset:
                        continue
                    if r_offset and offset - r_offset > 1 and acks_enabled_for(tp.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    await self.wait_first(self.callback(message), self.suspend_flow.wait())
                    read_offset[tp] = offset
                    continue
                last = fetch.last.get(tp)
                if last is not None:
                    if offset <= last:
                        continue
                    if offset - last > 1 and acks_enabled_for(tp.topic):
                        fetch.gaps.append((tp, last + 1, offset - 1))
                else:
                    r_offset = read_offset[tp]
                    if r_offset is not None and offset < r_offset:
                        continue  # read already (Faust drops these too)
                    seen = expected.get(tp)
                    if (seen is not None and seen[0] == fetch.epoch and offset > seen[1]
                            and acks_enabled_for(tp.topic)):
                        fetch.gaps.append((tp, seen[1], offset - 1))
                fetch.batch.append(message)
                fetch.last[tp] = offset
        self.diag.unset_flag(CONSUMER_FETCHING)
        return fetch

    async def _handle(self, fetch: _Fetch, expected: dict[Any, tuple[int, int]]) -> None:
        """Hand a fetch to the handler and ack what it handled; partitions with records left
        unhandled are sought back to their committed offsets."""
        if (self._epoch != fetch.epoch or self.app.consumer_generation_id != fetch.generation
                or not self.flow_active):
            # Fetched across a seek or a rebalance: where these records stand is not known.
            # Nothing of them is acked; reading resumes at the committed offsets.
            expected.clear()
            if self.flow_active:
                await self._reseek(set(fetch.last))
            return
        handler: BatchHandler = getattr(self.app, "batch_handler")  # noqa: B009 (install)
        done = await handler(fetch.batch)
        # Handled records are acked even if a seek came meanwhile (acking what was handled is
        # always right), but then their offsets say nothing of where the partition stands.
        same_epoch = self._epoch == fetch.epoch
        handled = self._handled_offsets(fetch, done)
        if same_epoch:
            for tp, start, stop in fetch.gaps:
                if tp in handled:
                    await self._add_gap(tp, start, stop)
        acks_enabled_for = self.app.topics.acks_enabled_for
        if self._handled_next is None:
            self._handled_next = {}
        monitor = self.app.monitor
        if monitor is not None:
            # Faust logs an ERROR for a partition whose records reached no stream for 5
            # minutes (verify_event_path); the handler's records never go through a stream.
            now = time.monotonic()
            for tp in handled:
                monitor.stream_inbound_time[tp] = now
        for tp, offsets in handled.items():
            if acks_enabled_for(tp.topic):
                self._ack_offsets(tp, offsets)
            self._handled_next[tp] = offsets[-1] + 1
        if same_epoch and self._epoch == fetch.epoch:
            for tp, offsets in handled.items():
                self._read_offset[tp] = offsets[-1]
                expected[tp] = (fetch.epoch, offsets[-1] + 1)
        else:
            expected.clear()
        if len(done) < len(fetch.batch):
            # Records left (their partition is not in service here, or their outputs
            # failed): read again.
            expected.clear()
            if self.flow_active:
                await self._reseek(set(fetch.last) - set(handled))
        await asyncio.sleep(0)  # let the web server and timers in between batches

    @staticmethod
    def _handled_offsets(fetch: _Fetch, done: list[Any]) -> dict[Any, list[int]]:
        """Offsets of the handled records per partition (Faust's TP), in order."""
        tps = {(tp.topic, tp.partition): tp for tp in fetch.last}
        handled: dict[Any, list[int]] = {}
        for record in done:
            tp = tps[record.topic, record.partition]
            offsets = handled.get(tp)
            if offsets is None:
                offsets = handled[tp] = []
            offsets.append(record.offset)
        return handled


@dataclass
class _Fetch:
    """The records of the handler's topics from one fetch."""

    generation: int  # the consumer generation when it began
    epoch: int  # the seek epoch when it began
    batch: list[Any] = field(default_factory=list)
    last: dict[Any, int] = field(default_factory=dict)  # per partition: last offset taken
    gaps: list[tuple[Any, int, int]] = field(default_factory=list)  # missing offsets


def undo_failed_commit(committed: Any, before: dict[Any, int | None], attempted: Any) -> None:
    """Where a failed commit left its offset as the committed one, the committed offset goes
    back to what it was before it (none: unknown); an offset that something else set since
    (a seek to the broker's committed offsets) stays."""
    for tp, offset in attempted.items():
        if committed.get(tp) != offset or before.get(tp) == offset:
            continue
        previous = before.get(tp)
        if previous is None:
            committed.pop(tp, None)
        else:
            committed[tp] = previous


def raced_commit(committed: Any, attempted: Any) -> set[Any]:
    """After a commit that a seek overlapped: the partitions whose recorded offset is the one
    it attempted (recorded over what the seek had set; whether the broker holds it is not
    known)."""
    return {tp for tp, offset in attempted.items() if committed.get(tp) == offset}


def consumer_lag(app: Any) -> dict[tuple[str, int], int]:
    """Per assigned partition of the batch handler's topics: the records up to its end (as of
    the last fetch) not yet handled."""
    consumer = app.consumer
    if not isinstance(consumer, BatchConsumer):
        return {}
    topics = consumer._batch_topics
    handled = consumer._handled_next or {}
    committed = consumer._committed_offset
    out = {}
    for tp in consumer.assignment():
        if tp.topic not in topics:
            continue
        end = consumer.highwater(tp)
        if end is None:
            continue  # not fetched yet
        start = handled.get(tp)
        if start is None:
            start = committed.get(tp) or 0
        out[(tp.topic, tp.partition)] = max(0, end - start)
    return out


def still_member(app: Any) -> bool:
    """Whether the worker is still the member of its group it was (aiokafka resets its
    generation to -1 when the coordinator no longer knows it, e.g. after its session timed out
    while it was stopped: its partitions may have had other owners meanwhile)."""
    try:
        coordinator = app.consumer._thread._consumer._coordinator
    except AttributeError:  # not started, or not the aiokafka driver
        return False
    return coordinator is not None and int(coordinator.generation) >= 0


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
        fetcher = consumer._thread._consumer._fetcher
        fetched = fetcher._records
        cluster = consumer._thread._consumer._client.cluster
        lines[0] += f", fetches in flight to nodes {sorted(fetcher._in_flight)}"
    except AttributeError:  # not started, or not the aiokafka driver
        assignment = None
        fetched = {}
        cluster = None
    active = consumer._active_partitions
    for tp in sorted(consumer.assignment()):
        acked = consumer._acked.get(tp) or []
        gaps = consumer._gap.get(tp)
        position = None
        client_view = ""  # aiokafka's own state of the partition, apart from Faust's
        if assignment is not None:
            try:
                state = assignment.state_value(TopicPartition(tp.topic, tp.partition))
                position = state._position
                client_view = (
                    (", client-paused" if state.paused else "")
                    + (", awaiting reset" if state.awaiting_reset else "")
                    + f", highwater {state.highwater}"
                    + (f", last response {time.time() - state.timestamp / 1000:.1f}s ago"
                       if state.timestamp else ", no fetch response yet"))
            except Exception:  # not in the client's assignment
                client_view = ", not in the client's assignment"
        lines.append(
            f"  {tp.topic}[{tp.partition}]: committed {consumer._committed_offset.get(tp)}, "
            f"read {consumer._read_offset.get(tp)}, acked {len(acked)}"
            + (f" ({min(acked)}..{max(acked)})" if acked else "")
            + (f", gaps {sorted((g.begin, g.end) for g in gaps)[:3]}" if gaps else "")
            + f", position {position}"
            + (", paused" if tp in consumer._paused_partitions else "")
            + (", inactive" if active is not None and tp not in active else "")
            + (", buffered" if tp in consumer._buffered_partitions else "")
            + (", fetched" if TopicPartition(tp.topic, tp.partition) in fetched else "")
            + client_view
            + ("" if cluster is None else
               f", leader {cluster.leader_for_partition(TopicPartition(tp.topic, tp.partition))}"))
    return "\n".join(lines)
