"""The change publisher: once every ``SEGMENTS_CHANGE_INTERVAL_MS``, on its turn, the count changes
of each active partition go to the change topic and the counts topic, write-ahead
(domain/ledger.py):

1. record intents and confirmations in the emitted-counts changelog, each naming the offset it
   should get; wait for the broker; the offsets it gave are the changes' versions, and say
   whether anyone else wrote to the partition meanwhile (then it is not published: its state
   goes stale and is rebuilt; the rebuilds know such records by the offset they name);
2. publish the change events and the current counts, keyed by segment; wait for the broker;
3. tell the ledgers they are published.

A failure at 1 or 2 gives the changes back to their ledgers: the partition's next turn takes them
again (a failure at 1 also makes the partition's next offset unknown: it is rebuilt first).
At a revocation or a stop, ``confirm`` records what was published as published.

The worker ticks ``spread`` times an interval and each tick gives a turn to a share of the
partitions, those whose last turn ended an interval ago: each segment's change events are at
least an interval apart, and the work (and the broker writes that batches' own writes queue
behind: aiokafka sends one request at a time to a broker) comes in ``spread`` small pieces, not
one large one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from streams.codec.changes import change_payload, count_payload, segment_key
from streams.codec.durable import emitted_key, encode_emitted, expected_offset_header
from streams.codec.names import EMITTED_COUNTS, Names
from streams.codec.partitioner import murmur2
from streams.domain.events import FamilyKey
from streams.domain.family import SegmentKey
from streams.domain.ledger import Publication
from streams.domain.partition import PartitionState
from streams.runtime.metrics import RuntimeMetrics
from streams.runtime.partitions import PartitionRegistry
from streams.runtime.sink import Sink, all_delivered

logger = logging.getLogger(__name__)

KEY_MEMO_MAX = 200_000  # segment keys whose record key is remembered
# Dirty families one round of a tick publishes at most, over its partitions.
PUBLICATION_MAX = 4_096
ROUND_SHARE_MAX = 1_024  # of one partition in a round (taken without a turn for the loop)
# Ticks per SEGMENTS_CHANGE_INTERVAL_MS in the worker: each publishes a share of the partitions.
SPREAD = 8


class ChangePublisher:
    def __init__(self, registry: PartitionRegistry, sink: Sink, names: Names,
                 rebalancing: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.time,
                 metrics: RuntimeMetrics | None = None, *, interval_s: float = 0.0,
                 spread: int = 1, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.spread = max(1, spread)
        self._monotonic = monotonic
        self._turns: dict[int, float] = {}  # partition -> when its last turn ended (monotonic)
        self.metrics = metrics or RuntimeMetrics()
        self.sink = sink
        self.names = names
        self.rebalancing = rebalancing
        self.clock = clock
        self.publications = 0  # ticks that wrote something
        self.changes = 0  # change events published
        self._keys: dict[SegmentKey, bytes] = {}  # emitted-counts keys
        self._segment_keys: dict[SegmentKey, bytes] = {}  # output keys

    async def tick(self) -> None:
        """Loop body. An exception escaping it stops the worker, so every failure is logged
        here and the changes are taken again at the partition's next turn.

        A turn publishes the families dirty when it starts, each once: those dirtied meanwhile
        wait for the next turn, so a turn ends under sustained load too and no segment is
        published twice in one. They go in rounds of at most PUBLICATION_MAX families in all
        (ROUND_SHARE_MAX a partition), each round written and acknowledged before the next is
        taken: what a round holds in memory at once is bounded however many families a burst
        touched. A partition's next turn comes an interval after this one ended."""
        registry = self.registry
        if not registry.serving or self.rebalancing():
            return
        async with registry.fence.publish:
            if not registry.serving:
                return
            unknown = {p for p, state in registry.active.items()
                       if state.ledger.next_offset is None}
            if unknown:
                self._give_up(unknown, "its emitted-counts offset is not known (a write failed)")
            states = self._due(list(registry.active.values()))
            if not states:
                return
            limit = max(1, min(ROUND_SHARE_MAX, PUBLICATION_MAX // len(states)))
            turn = {state.number: state.store.take_dirty() for state in states}
            for state in states:
                state.store.turn = turn[state.number]
            try:
                rounds = max(-(-len(dirty) // limit) for dirty in turn.values())
                wrote = False
                for _ in range(max(1, rounds)):
                    if not registry.serving or self.rebalancing():
                        break
                    published = await self._round(states, limit, turn)
                    if published is None:
                        break
                    wrote = True
                    self.changes += published
                    self.metrics.change_events.inc(published)
                if wrote:
                    self.publications += 1
            finally:
                ended = self._monotonic()
                for state in states:
                    state.store.dirty |= turn[state.number]  # (not taken: the next turn's)
                    state.store.turn = set()
                    state.store.in_flight = set()
                    self._turns[state.number] = ended

    def _due(self, states: list[PartitionState]) -> list[PartitionState]:
        """The partitions whose turn it is: at most a ``spread``-th of them (rounded up), the
        longest waiting first, among those whose last turn ended at least an interval ago.
        (Turns are kept for partitions gone too, at most one per partition of the topic: one
        that comes back, rebuilt or assigned again, still waits for its turn.)"""
        now = self._monotonic()
        turns = self._turns
        due = sorted((s for s in states
                      if now - turns.get(s.number, -math.inf) >= self.interval_s),
                     key=lambda s: (turns.get(s.number, -math.inf), s.number))
        return due[:-(-len(states) // self.spread)]

    @staticmethod
    def _take(state: PartitionState, limit: int, turn: dict[int, set[FamilyKey]]
              ) -> Publication | None:
        """The partition's next publication, of families of its turn only: the store's dirty
        set is the turn's while the ledger takes from it (no await in between)."""
        store = state.store
        dirtied_meanwhile, store.dirty = store.dirty, turn[state.number]
        try:
            return state.take_publication(limit)
        finally:
            turn[state.number], store.dirty = store.dirty, dirtied_meanwhile
            store.turn = turn[state.number]

    async def _round(self, states: list[PartitionState], limit: int,
                     turn: dict[int, set[FamilyKey]]) -> int | None:
        """One round of a tick: each partition's publication of at most ``limit`` dirty
        families of its turn (steps 1 to 3); the changes published, None if there was nothing
        to write or it failed."""
        taken: list[tuple[PartitionState, Publication]] = []
        for state in states:
            if self.registry.active.get(state.number) is not state:
                continue  # (gone meanwhile)
            try:
                publication = self._take(state, limit, turn)
            except Exception:  # a bug: this partition rebuilt (and published again), not a stop
                logger.exception("taking the count changes of partition %d failed",
                                 state.number)
                self._give_up({state.number}, "taking its count changes failed")
                continue
            if publication is not None:
                taken.append((state, publication))
                state.store.in_flight = {c.family for c in publication.changes}
            # Let requests and batches in between partitions instead of after all.
            await asyncio.sleep(0)
        if not taken:
            return None
        recorded = False
        try:
            taken = await self._record(taken)
            recorded = True
            await self._publish([p for _, p in taken])
        except Exception:
            logger.exception("publishing %d count changes failed; retrying",
                             sum(len(p.changes) for _, p in taken))
            for state, publication in taken:
                state.ledger.failed(publication, state.store, recorded)
            return None
        finally:
            for state in states:
                state.store.in_flight = set()  # (published, or dirty again: see failed)
        for state, publication in taken:
            state.ledger.published(publication)
        return sum(len(p.changes) for _, p in taken)

    async def confirm(self) -> None:
        """Record the published changes of every active partition as published (at a
        revocation or a stop, inside the fence: nothing else is published meanwhile). If it
        fails, the partition's next owner publishes those changes once more."""
        taken = [(state, Publication(state.number, [], state.ledger.take_confirmations()))
                 for state in self.registry.active.values()]
        try:
            await self._record([(s, p) for s, p in taken if p.confirmations])
        except Exception:
            logger.exception("recording published changes as published failed")
            for state, publication in taken:
                state.ledger.failed(publication, state.store, recorded=False)

    async def _record(self, taken: list[tuple[PartitionState, Publication]]
                      ) -> list[tuple[PartitionState, Publication]]:
        """Step 1: each partition's intents and confirmations, acknowledged by the broker; returns
        the publications whose records follow their partition's own last ones (the others'
        partitions were written to by someone else: given up). Raises when a write failed
        (then every partition's next offset is unknown)."""
        records: dict[int, dict[bytes, bytes | None]] = {}
        headers: dict[bytes, list[tuple[str, bytes]]] = {}
        for state, publication in taken:
            out: dict[bytes, bytes | None] = {}
            records[publication.partition] = out
            p = publication.partition
            at = state.ledger.next_offset  # where each record should land, in order
            for key, (count, previous) in publication.records().items():
                k = self._key(key)
                # A confirmed 0 is what no record says: a tombstone, so that segments that
                # emptied leave nothing behind once compacted.
                out[k] = (None if count == 0 and previous is None
                          else encode_emitted(count, p, previous))
                headers[k] = expected_offset_header(at)
                if at is not None:
                    at += 1
            await asyncio.sleep(0)  # between partitions (see tick)
        if not records:
            return taken
        try:
            offsets = await self.sink.send_located(
                self.names.changelog_topic(EMITTED_COUNTS), records, headers)
        except Exception:
            for state, _ in taken:
                state.ledger.next_offset = None
            raise
        kept = []
        fenced = set()
        for state, publication in taken:
            if state.ledger.recorded(publication, offsets.get(publication.partition, [])):
                kept.append((state, publication))
            else:
                fenced.add(publication.partition)
        if fenced:
            self._give_up(fenced, "another worker wrote to its emitted-counts changelog")
        return kept

    def _give_up(self, partitions: set[int], why: str) -> None:
        """Partitions whose state may no longer be the latest: nothing more is published from
        it; they are out of service until rebuilt from their changelogs (or moved away)."""
        logger.warning("not publishing partitions %s: %s; rebuilding them", sorted(partitions),
                       why)
        self.registry.mark_stale(partitions)

    async def _publish(self, publications: list[Publication]) -> None:
        """Step 2: the change events and the current counts, keyed by segment key, on the
        partition Kafka's default partitioner picks for that key."""
        changes_topic = self.names.changes_topic
        counts_topic = self.names.counts_topic
        change_partitions = await self.sink.partitions_for(changes_topic)
        count_partitions = await self.sink.partitions_for(counts_topic)
        now_ms = int(self.clock() * 1000)
        changes: dict[int, list[tuple[bytes, bytes | None]]] = {}
        counts: dict[int, list[tuple[bytes, bytes | None]]] = {}
        tombstones: dict[bytes, list[tuple[str, bytes]]] = {}
        for publication in publications:
            as_of = publication.as_of
            for c in publication.changes:
                key = self._segment_key(c.key)
                hashed = murmur2(key) & 0x7FFFFFFF
                changes.setdefault(change_partitions[hashed % len(change_partitions)], []
                                   ).append((key, change_payload(c, now_ms, as_of)))
                value = count_payload(c, as_of)
                counts.setdefault(count_partitions[hashed % len(count_partitions)], []
                                  ).append((key, value))
                if value is None:  # a tombstone has no value: its version is in a header
                    tombstones[key] = [("version", str(c.version).encode())]
            await asyncio.sleep(0)
        if changes:
            deliveries = await self.sink.send_partitions(changes_topic, changes)
            await all_delivered(await self.sink.send_partitions(counts_topic, counts,
                                                                deliveries, tombstones),
                                self.sink.delivery_timeout_s)

    def _key(self, key: SegmentKey) -> bytes:
        return _memo(self._keys, key, emitted_key)

    def _segment_key(self, key: SegmentKey) -> bytes:
        return _memo(self._segment_keys, key, segment_key)


def _memo(memo: dict[SegmentKey, bytes], key: SegmentKey,
          encode: Callable[[SegmentKey], bytes]) -> bytes:
    """``encode(key)``, remembered in ``memo`` (emptied once it holds KEY_MEMO_MAX keys)."""
    data = memo.get(key)
    if data is None:
        if len(memo) >= KEY_MEMO_MAX:
            memo.clear()
        data = memo[key] = encode(key)
    return data
