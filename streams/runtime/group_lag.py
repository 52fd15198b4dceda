"""The consumer group's lag per partition, as the broker has it: for each partition of the input
and repartition topics, the records after the group's committed offset. Answers that are not
from a serving owner (a standby copy, a worker in a rebalance) report it: their owner's own
count is not at hand, and what the owner has not committed is not reflected for certain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.codec.names import Names
from streams.runtime.kafka_clients import start_consumer

logger = logging.getLogger(__name__)

EVERY_S = 1.0  # how often the broker is asked in the background
READ_TIMEOUT_S = 2.0
RETRY_S = 1.0  # after a failed reading, how long callers take the last figures as they are


class GroupOffsets:
    """The committed offsets of a consumer group, from an admin client started once."""

    def __init__(self, admin: Callable[[], AIOKafkaAdminClient], group: str) -> None:
        self._make_admin = admin
        self._admin: AIOKafkaAdminClient | None = None
        self._group = group

    async def __call__(self) -> dict[TopicPartition, Any]:
        if self._admin is None:
            admin = self._make_admin()
            await admin.start()
            self._admin = admin
        try:
            offsets: dict[TopicPartition, Any] = await self._admin.list_consumer_group_offsets(
                self._group)
            return offsets
        except Exception:
            await self.close()
            raise

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()


class GroupLag:
    def __init__(self, names: Names, partitions: int,
                 consumer: Callable[[], AIOKafkaConsumer], committed: GroupOffsets,
                 input_partitions: Callable[[], int | None] = lambda: None) -> None:
        self._partitions = partitions
        self._input_topic = names.input_topic
        self._repartition_topic = names.repartition_topic
        # The input topic's partition count when known (None: taken to be ``partitions``).
        self._input_partitions = input_partitions
        self._make_consumer = consumer
        self._offsets: AIOKafkaConsumer | None = None
        self._committed = committed
        self._lag: dict[int, int] = {}
        self._read_at = float("-inf")  # monotonic time of the last reading
        self._reading: asyncio.Future[None] | None = None
        self._reading_started = float("-inf")
        self._failed_at = float("-inf")
        self.ends = -1  # the sum of the topics' end offsets at the last reading (-1: unknown)

    def of(self, partition: int) -> int:
        """Records of ``partition`` (input and repartition) after the committed offsets, as of
        the last reading (0 before the first)."""
        return self._lag.get(partition, 0)

    async def refresh(self, since: float | None = None) -> None:
        """Make sure the figures come from a reading started at or after ``since`` (monotonic;
        default: now), so that they count every record acknowledged before then. Concurrent
        callers share readings. When a reading fails (the broker away: no record can arrive
        either) the last figures stand, and for ``RETRY_S`` no caller waits for another."""
        since = time.monotonic() if since is None else since
        while self._read_at < since:
            if time.monotonic() - self._failed_at < RETRY_S:
                return
            reading = self._reading
            # (A reading done but not yet cleared by its callback is awaited without yielding:
            # waiting for it again would spin.)
            if reading is None or reading.done():
                reading = self._reading = asyncio.ensure_future(self._read())
                self._reading_started = time.monotonic()
                reading.add_done_callback(self._read_done)
            started = self._reading_started
            await asyncio.shield(reading)
            if started >= since:
                return  # (or it failed: the last figures stand)

    def _read_done(self, reading: asyncio.Future[None]) -> None:
        if self._reading is reading:
            self._reading = None
        if not reading.cancelled():
            reading.exception()  # (none: _read logs its failures)

    async def _read(self) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                if self._offsets is None:
                    self._offsets = self._make_consumer()
                    await start_consumer(self._offsets)
                inputs = self._input_partitions() or self._partitions
                tps = [TopicPartition(self._input_topic, p) for p in range(inputs)]
                tps += [TopicPartition(self._repartition_topic, p)
                        for p in range(self._partitions)]
                ends = await self._offsets.end_offsets(tps)
                committed = await self._committed()
        except Exception as exc:  # the broker away: keep the last figures
            logger.debug("the group's offsets are unknown: %r", exc)
            self._failed_at = time.monotonic()
            await self._close_consumer()
            await self._committed.close()
            return
        lag: dict[int, int] = {}
        unplaced = 0
        for tp in tps:
            done = committed.get(tp)
            offset = done.offset if done is not None and done.offset >= 0 else 0
            behind = max(0, ends[tp] - offset)
            if tp.topic == self._input_topic and inputs != self._partitions:
                unplaced += behind  # input partition p feeds any partition: counts for all
            else:
                lag[tp.partition] = lag.get(tp.partition, 0) + behind
        if unplaced:
            lag = {p: lag.get(p, 0) + unplaced for p in range(self._partitions)}
        self._lag = lag
        self.ends = sum(ends.values())
        self._read_at = started  # as of when it was asked: records after that may be missing

    async def run(self) -> None:
        """Read the lag every ``EVERY_S`` until cancelled."""
        try:
            while True:
                await self.refresh()
                await asyncio.sleep(EVERY_S)
        finally:
            if self._reading is not None:
                self._reading.cancel()
            await self._close_consumer()
            await self._committed.close()

    async def _close_consumer(self) -> None:
        consumer, self._offsets = self._offsets, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
