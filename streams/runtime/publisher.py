"""The change publisher: every ``SEGMENTS_CHANGE_INTERVAL_MS``, the count changes of every active
partition go to the change topic, write-ahead (domain/ledger.py):

1. record intents and confirmations in the emitted-counts changelog; wait for the broker;
2. publish the change events, keyed by program; wait for the broker;
3. tell the ledgers they are published.

A failure at 1 or 2 gives the changes back to their ledgers: the next tick takes them again.
At a revocation or a stop, ``confirm`` records what was published as published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from streams.codec.changes import change_key, change_payload
from streams.codec.durable import emitted_key, encode_emitted
from streams.codec.names import EMITTED_COUNTS, Names
from streams.codec.partitioner import partition_for
from streams.domain.family import SegmentKey
from streams.domain.ledger import Publication
from streams.domain.partition import PartitionState
from streams.runtime.metrics import RuntimeMetrics
from streams.runtime.partitions import PartitionRegistry
from streams.runtime.sink import Sink, all_delivered

logger = logging.getLogger(__name__)

KEY_MEMO_MAX = 200_000  # segment keys whose record key is remembered


class ChangePublisher:
    def __init__(self, registry: PartitionRegistry, sink: Sink, names: Names,
                 rebalancing: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.time,
                 metrics: RuntimeMetrics | None = None) -> None:
        self.registry = registry
        self.metrics = metrics or RuntimeMetrics()
        self.sink = sink
        self.names = names
        self.rebalancing = rebalancing
        self.clock = clock
        self.publications = 0  # ticks that wrote something
        self.changes = 0  # change events published
        self._keys: dict[SegmentKey, bytes] = {}

    async def tick(self) -> None:
        """Timer body. An exception escaping a Faust timer stops the worker, so every failure
        is logged here and the changes are taken again at the next tick."""
        registry = self.registry
        if not registry.serving or self.rebalancing():
            return
        async with registry.fence.publish:
            if not registry.serving:
                return
            taken: list[tuple[PartitionState, Publication]] = []
            for state in list(registry.active.values()):
                publication = state.take_publication()
                if publication is not None:
                    taken.append((state, publication))
                # After a burst a tick holds thousands of changes: let requests and batches in
                # between partitions instead of after all.
                await asyncio.sleep(0)
            if not taken:
                return
            recorded = False
            try:
                await self._record([p for _, p in taken])
                recorded = True
                await self._publish([p for _, p in taken])
            except Exception:
                logger.exception("publishing %d count changes failed; retrying",
                                 sum(len(p.changes) for _, p in taken))
                for state, publication in taken:
                    state.ledger.failed(publication, state.store, recorded)
                return
            for state, publication in taken:
                state.ledger.published(publication)
            self.publications += 1
            published = sum(len(p.changes) for _, p in taken)
            self.changes += published
            self.metrics.change_events.inc(published)

    async def confirm(self) -> None:
        """Record the published changes of every active partition as published (at a
        revocation or a stop, inside the fence: nothing else is published meanwhile). If it
        fails, the partition's next owner publishes those changes once more."""
        taken = [(state, Publication(state.number, [], state.ledger.take_confirmations()))
                 for state in self.registry.active.values()]
        try:
            await self._record([p for _, p in taken if p.confirmations])
        except Exception:
            logger.exception("recording published changes as published failed")
            for state, publication in taken:
                state.ledger.failed(publication, state.store, recorded=False)

    async def _record(self, publications: list[Publication]) -> None:
        """Step 1: each partition's intents and confirmations, acknowledged by the broker."""
        records: dict[int, dict[bytes, bytes | None]] = {}
        for publication in publications:
            out: dict[bytes, bytes | None] = {}
            records[publication.partition] = out
            p = publication.partition
            for key, (count, previous) in publication.records().items():
                # A confirmed 0 is what no record says: a tombstone, so that segments that
                # emptied leave nothing behind once compacted.
                out[self._key(key)] = (None if count == 0 and previous is None
                                       else encode_emitted(count, p, previous))
            await asyncio.sleep(0)  # between partitions (see tick)
        if records:
            await all_delivered(await self.sink.send_partitions(
                self.names.changelog_topic(EMITTED_COUNTS), records))

    async def _publish(self, publications: list[Publication]) -> None:
        """Step 2: the change events, keyed by program_id, on the partition Kafka's default
        partitioner picks for that key."""
        topic = self.names.changes_topic
        partitions = await self.sink.partitions_for(topic)
        now_ms = int(self.clock() * 1000)
        events: dict[int, list[tuple[bytes, bytes]]] = {}
        routes: dict[str, tuple[list[tuple[bytes, bytes]], bytes]] = {}  # few programs
        for publication in publications:
            for c in publication.changes:
                route = routes.get(c.program_id)
                if route is None:
                    key = change_key(c)
                    partition = partitions[partition_for(key, len(partitions))]
                    route = routes[c.program_id] = (events.setdefault(partition, []), key)
                route[0].append((route[1], change_payload(c, now_ms)))
            await asyncio.sleep(0)
        if events:
            await all_delivered(await self.sink.send_partitions(topic, events))

    def _key(self, key: SegmentKey) -> bytes:
        data = self._keys.get(key)
        if data is None:
            if len(self._keys) >= KEY_MEMO_MAX:
                self._keys.clear()
            data = self._keys[key] = emitted_key(key)
        return data
