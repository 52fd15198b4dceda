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
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer

# Faust's driver hard-codes fetch_max_wait_ms=1500. Requests on a broker connection are
# answered in order, so every metadata, offset or commit request queued behind a fetch that
# waits for data (a paused or idle partition) waited up to 1.5 s: ~3 s of each worker start
# (Faust's recovery asks for offsets twice). A shorter long-poll costs a few idle fetches/s.
FETCH_MAX_WAIT_MS = 100

BatchHandler = Callable[[list[Any]], Awaitable[list[Any]]]


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
    """See the module docstring and :func:`install`."""

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        # Faust's loop (faust/transport/consumer.py, Consumer._drain_messages), with the
        # records of the handler's topics collected per fetch instead of delivered one by one.
        handler: BatchHandler = getattr(self.app, "batch_handler")  # noqa: B009 (set by install)
        topics: frozenset[str] = getattr(self.app, "batch_topics")  # noqa: B009
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        ack = self.ack
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                batch: list[Any] = []
                last: dict[Any, int | None] = {}  # per partition of the batch: read offset
                gaps: list[tuple[Any, int, int]] = []
                generation = self.app.consumer_generation_id
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in self.getmany(timeout=1.0):
                        offset = message.offset
                        if tp.topic in topics:
                            r_offset = last[tp] if tp in last else read_offset[tp]
                            if r_offset is not None and offset < r_offset:
                                continue  # read already (Faust drops these too)
                            if (r_offset and offset - r_offset > 1
                                    and acks_enabled_for(message.topic)):
                                gaps.append((tp, r_offset + 1, offset))
                            batch.append(message)
                            last[tp] = offset
                            continue
                        # Any other topic (changelogs while Faust recovers): Faust's path.
                        r_offset = read_offset[tp]
                        if r_offset is not None and offset < r_offset:
                            continue
                        if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                        read_offset[tp] = offset
                unset_flag(CONSUMER_FETCHING)
                # A batch fetched before a rebalance began is dropped whole (no ack, no read
                # offset): after every rebalance Faust seeks each partition it keeps to its
                # committed offset, so the owner reads these records again. A rebalance cannot
                # complete while the handler runs (the revocation waits for its batch lock).
                if batch and self.app.consumer_generation_id == generation and self.flow_active:
                    done = await handler(batch)
                    if done:
                        for tp, start, stop in gaps:
                            await self._add_gap(tp, start, stop)
                        for message in done:
                            ack(message)
                            read_offset[message.tp] = message.offset
                    if len(done) < len(batch) and self.flow_active:
                        await self._rewind(batch, done)
                    await asyncio.sleep(0)  # let the web server and timers in between batches
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
            unset_flag(CONSUMER_FETCHING)

    async def _rewind(self, batch: list[Any], done: list[Any]) -> None:
        """Seek each partition with records the handler left (outside a rebalance: a partition
        whose state is not ready) back to the first of them, so they are read again."""
        handled = {id(m) for m in done}
        first: dict[Any, int] = {}
        for m in batch:
            if id(m) not in handled and m.tp not in first:
                first[m.tp] = m.offset
        assigned = self.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                try:
                    await self.seek(tp, offset)
                except Exception as exc:  # revoked between the check and the seek
                    self.log.info("not rewinding %r to %d: %r", tp, offset, exc)
