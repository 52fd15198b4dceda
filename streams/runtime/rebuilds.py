"""Background rebuilds (contract section 11): partitions gained at a rebalance are rebuilt from
their changelogs here, outside the assignment callback, so that the group's join never waits
for a rebuild.

The assignment callback (runtime/recovery.py) only decides which partitions need a cold rebuild
and hands them to ``Rebuilds.assign``; their input stays paused (faust_ext/consumer.py keeps
them out of Faust's resume) while ``run`` reads them, one partition at a time, in slices of
``SLICE`` records with the event loop given back between slices. Each ``Rebuild`` goes through
its ``Step``: READING both changelogs up to their current ends, SETTLING (indexes built in
steps), then installed in the registry and its input resumed once the worker serves.

Invariants:
- a partition's input is handled only once its state holds both changelogs up to their ends
  (it is not in ``registry.active`` before: the batch processor leaves its records unacked);
- a rebalance that keeps the partition assigned keeps its rebuild where it was (what it read
  is a prefix of the changelog; reading on from there gives the same state); one that takes
  the partition away cancels it;
- the emitted-counts ledger continues at the changelog's end as read at the install (the
  end is read again after settling, and whatever came meanwhile is read first).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from streams.codec.exceptions import MalformedRecord
from streams.codec.names import TABLES, Names
from streams.domain.partition import PartitionState
from streams.runtime.metrics import RuntimeMetrics
from streams.runtime.partitions import PartitionRegistry, Phase
from streams.runtime.recovery import LOAD_SLICE, READ_BATCH, Reader, load_record, loaded_slice

logger = logging.getLogger(__name__)

SLICE = READ_BATCH  # records read and applied per slice (a few milliseconds of the loop)
END_TIMEOUT_S = 5.0


class Step(enum.Enum):
    READING = "reading"
    SETTLING = "settling"
    WAITING = "waiting"  # read and settled: installed once the worker serves


@dataclass(eq=False)
class Rebuild:
    """One partition's rebuild."""

    partition: int
    state: PartitionState
    positions: dict[str, int] = field(default_factory=dict)  # table -> next offset to read
    ends: dict[str, int] = field(default_factory=dict)  # table -> end to read up to
    step: Step = Step.READING
    records: int = 0
    rebalances: int = 0  # rebalances it went on through
    started: float = field(default_factory=time.monotonic)


class Rebuilds:
    def __init__(self, registry: PartitionRegistry, reader: Reader, names: Names,
                 skipped: Callable[[str, int, MalformedRecord], None],
                 resume: Callable[[int], None] = lambda partition: None,
                 metrics: RuntimeMetrics | None = None, slice_pause_s: float = 0.0,
                 slice_records: int = SLICE) -> None:
        self.registry = registry
        self.reader = reader
        self.names = names
        self._skipped = skipped
        self._resume = resume  # the partition's input is read from now on
        self.metrics = metrics or RuntimeMetrics()
        # Test only (SEGMENTS_TEST_ONLY_REBUILD_SLICE_PAUSE_MS): a pause after every slice, so
        # that a small state takes long enough to rebuild for a test to act meanwhile.
        self.slice_pause_s = slice_pause_s
        self.slice_records = slice_records
        self.jobs: dict[int, Rebuild] = {}  # in the order they were queued
        self.faust_offsets: dict[str, dict[int, int]] = {}  # what Faust is told it holds
        self._wake = asyncio.Event()

    # -- what the assignment callback does --------------------------------------------------------
    def assign(self, assigned: set[int], cold: Iterable[int]) -> None:
        """A new assignment: rebuilds of partitions no longer ``assigned`` are cancelled, those
        still assigned go on where they are, and ``cold`` ones (not held here in any form) are
        queued. Never waits."""
        for p in [p for p in self.jobs if p not in assigned]:
            job = self.jobs.pop(p)
            self.metrics.rebuilds.labels("cancelled").inc()
            logger.info("rebuild of partition %d cancelled (revoked) after %d records", p,
                        job.records)
        for job in self.jobs.values():
            job.rebalances += 1
            if job.step is Step.WAITING:
                job.step = Step.SETTLING  # the ends are checked again before the install
            self.metrics.rebuilds.labels("continued").inc()
            logger.info("rebuild of partition %d goes on at %s (%d records read)", job.partition,
                        job.positions, job.records)
        for p in sorted(set(cold) - set(self.jobs)):
            self.jobs[p] = Rebuild(p, self.registry.new_state(p, rebuilding=True))
            self.metrics.rebuilds.labels("started").inc()
        for table in list(self.faust_offsets):
            self.faust_offsets[table] = {p: o for p, o in self.faust_offsets[table].items()
                                         if p in self.jobs}
        self.registry.rebuilding = set(self.jobs)
        self._wake.set()

    def holds(self, partition: int) -> bool:
        return partition in self.jobs

    @property
    def partitions(self) -> set[int]:
        return set(self.jobs)

    def tell_faust(self, table: str, ends: dict[int, int]) -> None:
        """Faust's recovery is told that the state of a partition rebuilt here holds its
        changelog up to these ends, so it replays nothing of it (records it replays anyway
        are ignored: ``Recovery.load``); this rebuild reads everything."""
        offsets = self.faust_offsets.setdefault(table, {})
        for p, end in ends.items():
            if p in self.jobs and end > 0:
                offsets[p] = end - 1

    def faust_offset(self, table: str, partition: int) -> int | None:
        return self.faust_offsets.get(table, {}).get(partition)

    def stop(self) -> None:
        self.jobs.clear()
        self.registry.rebuilding = set()

    # -- the service ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Rebuild the queued partitions until cancelled."""
        while True:
            try:
                progressed = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away: the rebuilds wait, then go on
                logger.warning("rebuilding partitions failed (%r); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if not progressed:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.5)

    async def drain(self) -> None:
        """Step until nothing can progress (tests; the worker runs ``run``)."""
        while await self.step():
            pass

    async def step(self) -> bool:
        """One bounded piece of work on the first rebuild that can progress; False if none
        can (nothing queued, or only rebuilds waiting for the worker to serve)."""
        for job in list(self.jobs.values()):
            if job.step is Step.WAITING and not self._installable():
                continue
            await self._advance(job)
            return True
        return False

    def _installable(self) -> bool:
        return self.registry.phase is Phase.SERVING and self.registry.serving

    def _current(self, job: Rebuild) -> bool:
        return self.jobs.get(job.partition) is job

    async def _advance(self, job: Rebuild) -> None:
        p = job.partition
        if job.step is Step.READING:
            if not job.ends:
                job.ends = await self._ends(p)
            for table in TABLES:
                if job.positions.get(table, 0) < job.ends[table]:
                    await self._read_slice(job, table)
                    return
            job.step = Step.SETTLING
            return
        if job.step is Step.SETTLING:
            for _ in job.state.settle_steps(self.registry.settle_budget):
                await asyncio.sleep(0)
                if not self._current(job):
                    return
            job.step = Step.WAITING
            return
        # WAITING: anything written since the ends were read is read first.
        generation = self.registry.generation
        ends = await self._ends(p)
        if not self._current(job):
            return
        if any(ends[t] > job.positions.get(t, 0) for t in TABLES):
            job.ends = ends
            job.state.settled = False  # (the install settles what came since)
            job.step = Step.READING
            return
        async with self.registry.fence.batch:
            if (not self._current(job) or self.registry.generation != generation
                    or not self._installable()):
                return
            self._install(job)
        self._resume(p)

    async def _ends(self, partition: int) -> dict[str, int]:
        ends = {}
        for table in TABLES:
            ends[table] = await asyncio.wait_for(
                self.reader.end_offset(self.names.changelog_topic(table), partition),
                END_TIMEOUT_S)
        return ends

    async def _read_slice(self, job: Rebuild, table: str) -> None:
        p = job.partition
        start = job.positions.get(table, 0)
        records, after = await self.reader.read_slice(self.names.changelog_topic(table), p,
                                                      start, self.slice_records)
        if not self._current(job):
            return  # cancelled meanwhile: nothing of it applied
        state = job.state
        for i, (key, value) in enumerate(records):
            load_record(state, table, p, key, value, self._skipped)
            if i % LOAD_SLICE == LOAD_SLICE - 1:
                await loaded_slice()
                if not self._current(job):
                    return
        job.positions[table] = max(after, start)
        job.records += len(records)
        self.metrics.rebuild_records.inc(len(records))
        await loaded_slice()
        if self.slice_pause_s:
            await asyncio.sleep(self.slice_pause_s)

    def _install(self, job: Rebuild) -> None:
        """In service (the caller holds the batch fence, the worker serves)."""
        p = job.partition
        registry = self.registry
        del self.jobs[p]
        for offsets in self.faust_offsets.values():
            offsets.pop(p, None)
        for table in TABLES:
            position = job.positions.get(table, 0)
            if position > 0:
                registry.remember(table, p, position - 1)
        registry.rebuilding.discard(p)
        registry.install({p: job.state})
        if not registry.rebuilding:
            registry.served = True
        self.metrics.rebuilds.labels("finished").inc()
        logger.warning("partition %d rebuilt in the background: %d records in %.2fs%s; serving "
                       "it", p, job.records, time.monotonic() - job.started,
                       f" (through {job.rebalances} rebalances)" if job.rebalances else "")
