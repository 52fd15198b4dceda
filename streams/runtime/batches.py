"""The batch processor: the batched consumer's handler (faust_ext/consumer.py).

A record is handled, and so acked, once everything it produced is acknowledged by the broker.
Records whose outputs failed are not acked: the consumer reads them again from the committed
offset, after a back-off, and a partition whose durable writes failed is first rebuilt from its
changelog (its state ran ahead of it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from streams.runtime.ingest import BatchOutput, IngestHandler, InputRecord
from streams.runtime.metrics import RuntimeMetrics
from streams.runtime.partitions import PartitionRegistry
from streams.runtime.sink import Failures, Sink, Source

logger = logging.getLogger(__name__)

YIELD_EVERY = 400  # records handled between two yields to the event loop within a batch
RETRY_MIN_S, RETRY_MAX_S = 0.1, 2.0

K = TypeVar("K")


class Backoff(Generic[K]):
    """When each key may be tried again after failures: a delay doubling from ``first_s`` up to
    ``max_s``, forgotten on success."""

    def __init__(self, first_s: float = RETRY_MIN_S, max_s: float = RETRY_MAX_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._first_s = first_s
        self._max_s = max_s
        self._clock = clock
        self._delay: dict[K, float] = {}
        self._until: dict[K, float] = {}

    def __bool__(self) -> bool:
        return bool(self._until)

    def failed(self, key: K) -> None:
        delay = min(self._max_s, max(self._first_s, 2 * self._delay.get(key, 0.0)))
        self._delay[key] = delay
        self._until[key] = self._clock() + delay

    def succeeded(self, key: K) -> None:
        self._delay.pop(key, None)
        self._until.pop(key, None)

    def waiting(self, key: K) -> bool:
        until = self._until.get(key)
        return until is not None and self._clock() < until

    def next_in(self) -> float:
        """Seconds until the first key may be tried again (0 if one may be now)."""
        return max(0.0, min(self._until.values(), default=0.0) - self._clock())

    def clear(self) -> None:
        self._delay.clear()
        self._until.clear()


@dataclass
class BatchStats:
    """What the batch processor did, for /healthz and metrics."""

    processed: int = 0  # records handled
    invalid: int = 0  # dead letters written
    failed_batches: int = 0


def by_partition(records: Iterable[InputRecord]) -> dict[Source, list[InputRecord]]:
    """Records grouped per (topic, partition), in arrival order."""
    grouped: dict[Source, list[InputRecord]] = {}
    for r in records:
        group = grouped.get((r.topic, r.partition))
        if group is None:
            group = grouped[(r.topic, r.partition)] = []
        group.append(r)
    return grouped


class BatchProcessor:
    def __init__(self, registry: PartitionRegistry, handler: IngestHandler, sink: Sink,
                 repair: Callable[[], Awaitable[None]],
                 metrics: RuntimeMetrics | None = None,
                 input_copartitioned: Callable[[], bool] = lambda: True) -> None:
        self.registry = registry
        self.handler = handler
        # Whether input partition p is assigned with state partition p (Faust co-assigns topics
        # of one partition count only): else input records need no state and are all
        # repartitioned, whatever partition they were read from.
        self.input_copartitioned = input_copartitioned
        self.sink = sink
        self.repair = repair
        self.metrics = metrics or RuntimeMetrics()
        self.stats = BatchStats()
        # (topic, partition) of records whose outputs failed: when they may be handled again
        # (forgotten at a rebalance).
        self.held: Backoff[Source] = Backoff()
        self._generation = registry.generation

    async def __call__(self, records: list[InputRecord]) -> list[InputRecord]:
        """Every fetched record of the input and repartition topics, in partition order;
        returns those handled, to be acked. Runs inside the fence, so a rebalance waits for a
        batch in flight. Records that cannot be handled here now (the worker is not serving,
        their partition is not owned or out of service, or held back after a failure) are not
        acked: the consumer seeks their partitions back to the committed offset, and their
        partition's next owner, this worker or another, reads them again."""
        registry = self.registry
        async with registry.fence.batch:
            if not registry.serving:
                return []
            if registry.stale:
                await self.repair()
                if not registry.serving:  # a rebalance began meanwhile
                    return []
            if self._generation != registry.generation:
                self._generation = registry.generation
                self.held.clear()
            out = BatchOutput()
            broken = Failures()
            done: list[InputRecord] = []
            held = self.held
            waiting = False
            since_yield = 0
            input_topic = self.handler.input_topic
            stateless_input = not self.input_copartitioned()
            generation = registry.generation
            unhandled: set[Source] = set()  # partly handled, not acked
            stopped = False
            for (topic, part), group in by_partition(records).items():
                if stopped:
                    break
                state = registry.active.get(part)
                if stateless_input and topic == input_topic:
                    state = None
                elif state is None:
                    continue
                if held and held.waiting((topic, part)):
                    waiting = True  # failed lately: read again after its back-off
                    continue
                # In slices of YIELD_EVERY records, requests let in between (they see the
                # records applied so far).
                handled = True
                for start in range(0, len(group), YIELD_EVERY):
                    if since_yield >= YIELD_EVERY:
                        await asyncio.sleep(0)
                        since_yield = 0
                        # A rebalance began meanwhile (or a stall), or the partition was
                        # taken out of service (the publisher gave it up): the rest is read
                        # again by whoever holds it next, the slices handled so far too.
                        stopped = not registry.serving or registry.generation != generation
                        if stopped or (state is not None
                                       and registry.active.get(part) is not state):
                            handled = False
                            unhandled.add((topic, part))
                            break
                    piece = group[start:start + YIELD_EVERY] if len(group) > YIELD_EVERY else group
                    try:
                        self.handler.handle(topic, part, state, piece, out)
                    except Exception as exc:  # a bug: hold this partition back, not the worker
                        logger.exception("handling records of %s[%d] failed", topic, part)
                        # Its state may hold part of them without their writes: rebuilt too.
                        broken.add(frozenset({(topic, part)}), None if state is None else part,
                                   exc)
                        handled = False
                        break
                    since_yield += len(piece)
                if handled:
                    done += group
            failures = await self.sink.send_output(out)
            failures.merge(broken)
            self.stats.invalid += len(out.dead)
            for source, outcome in out.outcomes.items():
                if source in failures.sources:
                    continue
                if source in unhandled:  # counted when read again, but what was forgotten
                    self.metrics.handled(0, 0, 0, [], forgotten=outcome.forgotten)
                else:
                    self.metrics.handled(outcome.applied, outcome.ignored, outcome.invalid,
                                         outcome.applied_timestamps, outcome.late,
                                         outcome.forgotten)
            if failures:
                self._failed(failures)
                done = [r for r in done if (r.topic, r.partition) not in failures.sources]
            if held:
                for r in done:
                    held.succeeded((r.topic, r.partition))
            self.stats.processed += len(done)
            if not done and waiting and not stopped:
                # Only records held back came: wait instead of fetching them again at once.
                await asyncio.sleep(held.next_in())
            return done

    def _failed(self, failures: Failures) -> None:
        self.stats.failed_batches += 1
        self.metrics.failed_batches.inc()
        for source in failures.sources:
            self.held.failed(source)
        stale = self.registry.mark_stale(failures.changelog_partitions)
        logger.warning("writes of a batch failed (%s); its records of %s are read again%s",
                       failures.describe(), sorted(failures.sources),
                       f", partitions {sorted(stale)} rebuilt first" if stale else "")
