"""The sink: sends what a batch produced and says what the broker did not acknowledge.

Records go to the producer as whole record batches per partition (``send`` costs a future and an
accumulator lookup per record); dead letters one by one, each cut to what the broker takes. The
sink waits for every delivery and attributes each failure to the input partitions whose records
produced it, so that only those are read again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from streams.codec.dead_letters import MIN_DEAD_LETTER_BYTES, dead_letter
from streams.codec.names import Names
from streams.runtime.ingest import BatchOutput, InputRecord

logger = logging.getLogger(__name__)

Source = tuple[str, int]  # (topic, partition) of input records
# One partition's records: (key, value) pairs, or values by key (None: a tombstone).
Records = Sequence[tuple[bytes, bytes | None]] | Mapping[bytes, bytes | None]
Headers = Mapping[bytes, list[tuple[str, bytes]]]  # of some records, by key


class Producer(Protocol):
    """What the sink uses of aiokafka's producer."""

    def create_batch(self) -> Any: ...
    async def send_batch(self, batch: Any, topic: str, *, partition: int
                         ) -> asyncio.Future[Any]: ...
    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[Any]: ...
    async def partitions_for(self, topic: str) -> set[int]: ...


@dataclass
class Failures:
    """The outputs of a batch that the broker did not acknowledge."""

    sources: set[Source] = field(default_factory=set)  # of the records that produced them
    changelog_partitions: set[int] = field(default_factory=set)  # with a failed durable write
    errors: list[BaseException] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.sources)

    def add(self, sources: frozenset[Source], changelog_partition: int | None,
            error: BaseException) -> None:
        self.sources |= sources
        if changelog_partition is not None:
            self.changelog_partitions.add(changelog_partition)
        self.errors.append(error)

    def merge(self, other: Failures) -> None:
        self.sources |= other.sources
        self.changelog_partitions |= other.changelog_partitions
        self.errors += other.errors

    def describe(self) -> str:
        kinds = sorted({type(e).__name__ for e in self.errors})
        return f"{len(self.errors)} failed: {', '.join(kinds)}; first: {self.errors[0]!r}"


_Wait = tuple[Awaitable[Any], frozenset[Source], int | None]


class DeliveryTimedOut(Exception):
    """A write the broker did not acknowledge within the produce timeout."""


def _outcome(future: asyncio.Future[Any]) -> Any:
    if future.cancelled():
        return asyncio.CancelledError()
    return future.exception() or future.result()


async def settle(awaitables: Iterable[Awaitable[Any]], timeout_s: float | None
                 ) -> list[Any]:
    """The results of ``awaitables``, a failure as its exception; one not done within
    ``timeout_s`` fails with DeliveryTimedOut. The idempotent producer never gives up on a batch
    (aiokafka 0.14 retries it until the broker takes it, sender.py ``_can_retry``), so the
    produce timeout is kept here: the batch's records are read again, and the late write, if it
    lands, is a duplicate that last-writer-wins absorbs."""
    futures = [asyncio.ensure_future(a) for a in awaitables]
    if not futures:
        return []
    if timeout_s is None:
        return await asyncio.gather(*futures, return_exceptions=True)
    done, pending = await asyncio.wait(futures, timeout=timeout_s)
    for future in pending:
        future.add_done_callback(_outcome)  # its failure, if any, retrieved when it comes
    timed_out = DeliveryTimedOut(f"not acknowledged within {timeout_s:g} s")
    return [_outcome(f) if f in done else timed_out for f in futures]


class Sink:
    def __init__(self, producer: Callable[[], Producer], names: Names,
                 max_request_size: int, check: Callable[[], None] = lambda: None,
                 delivery_timeout_s: float | None = None) -> None:
        self._producer = producer  # the producer exists once the worker has started
        self._names = names
        self._max_request_size = max_request_size
        self._check = check  # raises when nothing may be written now (runtime/stalls.py)
        self.delivery_timeout_s = delivery_timeout_s  # SEGMENTS_PRODUCE_TIMEOUT_MS

    async def send_output(self, out: BatchOutput) -> Failures:
        """Send a batch's dead letters, repartitioned events and durable writes, and wait for
        the broker to acknowledge all of it."""
        failures = Failures()
        waits: list[_Wait] = []
        input_topic = self._names.input_topic
        repartition_topic = self._names.repartition_topic
        changelog = self._names.changelog_topic("recommendations")
        for record, reason in out.dead:
            waits.append((self.send_dead_letter(record, reason),
                          frozenset({(record.topic, record.partition)}), None))
        for destination, records in out.repartition.items():
            sources = frozenset((input_topic, p) for p in out.sources.get(destination, ()))
            await self._queue(repartition_topic, destination, records, sources, None, waits,
                              failures)
        for partition, writes in out.writes.items():
            if writes:
                await self._queue(changelog, partition, writes,
                                  frozenset({(input_topic, partition),
                                             (repartition_topic, partition)}),
                                  partition, waits, failures)
        results = await settle([w for w, _, _ in waits], self.delivery_timeout_s)
        for result, (_, sources, changelog_partition) in zip(results, waits, strict=True):
            if isinstance(result, BaseException):
                failures.add(sources, changelog_partition, result)
        return failures

    async def _queue(self, topic: str, partition: int,
                     records: Records,
                     sources: frozenset[Source], changelog_partition: int | None,
                     waits: list[_Wait], failures: Failures) -> None:
        """Queue records for one partition; their deliveries join ``waits``, a failure to
        queue them joins ``failures``."""
        deliveries: list[asyncio.Future[Any]] = []
        try:
            await self.send_partitions(topic, {partition: records}, deliveries)
        except Exception as exc:
            failures.add(sources, changelog_partition, exc)
        waits.extend((delivery, sources, changelog_partition) for delivery in deliveries)

    async def send_partitions(
            self, topic: str,
            by_partition: Mapping[int, Records],
            futures: list[asyncio.Future[Any]] | None = None,
            headers: Headers | None = None,
    ) -> list[asyncio.Future[Any]]:
        """Queue records, per partition ``(key, value)`` pairs (a list, or a mapping of values
        by key; a None value is a tombstone), in this order per partition, as whole record
        batches. Returns their delivery futures, appended to ``futures`` when given (so that
        the caller has those queued before a failure to queue the rest)."""
        return await self._send(topic, by_partition,
                                [] if futures is None else futures, None, headers)

    async def send_located(self, topic: str, by_partition: Mapping[int, Records],
                           headers: Headers | None = None) -> dict[int, list[int]]:
        """Like ``send_partitions``, then wait for every delivery (raising the first failure);
        returns, per partition, the offset the broker gave each record, in order."""
        placed: list[tuple[int, int]] = []
        futures = await self._send(topic, by_partition, [], placed, headers)
        results = await settle(futures, self.delivery_timeout_s)
        offsets: dict[int, list[int]] = {}
        for result, (partition, n) in zip(results, placed, strict=True):
            if isinstance(result, BaseException):
                raise result
            offsets.setdefault(partition, []).extend(range(result.offset, result.offset + n))
        return offsets

    async def _send(self, topic: str, by_partition: Mapping[int, Records],
                    futures: list[asyncio.Future[Any]], placed: list[tuple[int, int]] | None,
                    headers: Headers | None = None) -> list[asyncio.Future[Any]]:
        """``placed`` (when given) gets (partition, records) of each batch, as ``futures``
        its delivery (whose result is the batch's base offset); ``headers``: by record key."""
        producer = self._producer()
        for partition, items in by_partition.items():
            self._check()
            if not items:
                continue
            batch = producer.create_batch()
            append = batch.append
            n = 0
            for key, value in (items.items() if isinstance(items, Mapping) else items):
                # (aiokafka's C record builder takes a list, no other sequence)
                extra = {} if headers is None else {"headers": headers.get(key, [])}
                if append(key=key, value=value, timestamp=None, **extra) is None:  # full
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    if placed is not None:
                        placed.append((partition, n))
                    batch = producer.create_batch()
                    append = batch.append
                    append(key=key, value=value, timestamp=None, **extra)
                    n = 0
                n += 1
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            if placed is not None:
                placed.append((partition, n))
            await asyncio.sleep(0)  # thousands of appends per partition: let others in
        return futures

    async def send_dead_letter(self, record: InputRecord, reason: str) -> None:
        """Send one record's dead letter and wait for its acknowledgement; raises if it cannot
        be delivered. A dead letter the broker finds too large (a topic with a smaller
        ``max.message.bytes``) is sent again cut to half the size, down to
        ``MIN_DEAD_LETTER_BYTES``."""
        max_bytes = self._max_request_size
        while True:
            letter = dead_letter(record.key, record.value, reason, max_bytes=max_bytes,
                                 source=(record.topic, record.partition, record.offset))
            self._check()
            try:
                delivery = await self._producer().send(
                    self._names.dlq_topic, letter.value, key=letter.key,
                    headers=list(letter.headers))
                await delivery
                return
            except (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError):
                if max_bytes <= MIN_DEAD_LETTER_BYTES:
                    raise
                max_bytes = max(MIN_DEAD_LETTER_BYTES, max_bytes // 2)

    async def partitions_for(self, topic: str) -> list[int]:
        return sorted(await self._producer().partitions_for(topic))


async def all_delivered(deliveries: list[asyncio.Future[Any]],
                        timeout_s: float | None = None) -> None:
    """Wait for every delivery; raise the first failure (after all of them are done or timed
    out, so that no failure goes unretrieved)."""
    for result in await settle(deliveries, timeout_s):
        if isinstance(result, BaseException):
            raise result
