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
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer

BatchHandler = Callable[[list[Any]], Awaitable[list[Any]]]


def install(app: Any, topics: Iterable[str], handler: BatchHandler) -> None:
    """Make ``app``'s consumer (created when its worker starts) a :class:`BatchConsumer` that
    hands the records of ``topics`` to ``handler``; it returns the records it handled."""
    app.transport.Consumer = BatchConsumer
    app.batch_topics = frozenset(topics)
    app.batch_handler = handler


class BatchConsumer(AIOKafkaDriverConsumer):
    """See the module docstring and :func:`install`."""

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
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in self.getmany(timeout=1.0):
                        offset = message.offset
                        r_offset = read_offset[tp]
                        if r_offset is not None and offset < r_offset:
                            continue  # read already (Faust drops these too)
                        if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if tp.topic in topics:
                            batch.append(message)
                        else:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        read_offset[tp] = offset
                unset_flag(CONSUMER_FETCHING)
                if batch:
                    for message in await handler(batch):
                        ack(message)
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
