"""Background rebuilds (contract section 11): partitions gained at a rebalance are rebuilt from
their changelogs here, outside the assignment callback, so that the group's join never waits
for a rebuild.

The assignment callback (runtime/recovery.py) only decides which partitions need a cold rebuild
and hands them to ``Rebuilds.assign``; their input stays paused (faust_ext/consumer.py keeps
them out of Faust's resume) while ``run`` reads their changelogs together (one consumer, as a
fetch serves many partitions at the cost of one) in slices of ``SLICE`` records, the event loop
given back between slices. Each ``Rebuild`` goes through its ``Step``: READING both changelogs
up to their current ends, SETTLING (indexes built in steps), WAITING, then installed in the
registry and its input resumed, each partition on its own, once the worker serves.

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

SLICE = READ_BATCH  # records read per slice (applied LOAD_SLICE at a time)
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
        """One bounded piece of work: a slice read across the partitions still being read,
        or the settling of one, or the install of those read and settled; False if nothing
        can progress (nothing queued, or only rebuilds waiting for the worker to serve)."""
        jobs = list(self.jobs.values())
        reading = [job for job in jobs if job.step is Step.READING]
        if reading:
            await self._read_slice(reading)
            return True
        settling = next((job for job in jobs if job.step is Step.SETTLING), None)
        if settling is not None:
            await self._settle(settling)
            return True
        waiting = [job for job in jobs if job.step is Step.WAITING]
        if waiting and self._installable():
            await self._install_all(waiting)
            return True
        return False

    def _installable(self) -> bool:
        return self.registry.phase is Phase.SERVING and self.registry.serving

    def _current(self, job: Rebuild) -> bool:
        return self.jobs.get(job.partition) is job

    def _tp(self, table: str, partition: int) -> tuple[str, int]:
        return self.names.changelog_topic(table), partition

    async def _ends(self, jobs: list[Rebuild]) -> dict[int, dict[str, int]]:
        """Per partition, its changelogs' current ends (one request for all)."""
        tps = [self._tp(t, job.partition) for job in jobs for t in TABLES]
        ends = await asyncio.wait_for(self.reader.end_offsets(tps), END_TIMEOUT_S)
        tables = {self.names.changelog_topic(t): t for t in TABLES}
        out: dict[int, dict[str, int]] = {}
        for (topic, p), end in ends.items():
            out.setdefault(p, {})[tables[topic]] = end
        return out

    async def _read_slice(self, jobs: list[Rebuild]) -> None:
        """One slice (``slice_records`` records in all) of every changelog partition not yet
        read to its end; partitions read to their ends go on to settle."""
        unknown = [job for job in jobs if not job.ends]
        if unknown:
            ends = await self._ends(unknown)
            for job in unknown:
                if self._current(job):
                    job.ends = ends[job.partition]
        starts: dict[tuple[str, int], int] = {}
        read_for: dict[int, Rebuild] = {}
        for job in jobs:
            if not self._current(job):
                continue
            behind = [t for t in TABLES if job.positions.get(t, 0) < job.ends[t]]
            if not behind:
                job.step = Step.SETTLING
                continue
            read_for[job.partition] = job
            for t in behind:
                starts[self._tp(t, job.partition)] = job.positions.get(t, 0)
        if not starts:
            return
        read = await self.reader.read_slices(starts, self.slice_records)
        tables = {self.names.changelog_topic(t): t for t in TABLES}
        n = 0
        for (topic, p), (records, after) in read.items():
            # Only the rebuild it was read for: one of a partition revoked and assigned again
            # meanwhile starts from offset 0, and would skip what lies before this slice.
            target = read_for[p]
            table = tables[topic]
            start = starts[(topic, p)]
            if not self._current(target) or target.step is not Step.READING:
                continue  # cancelled meanwhile: nothing of it applied
            for key, value, offset, headers in records:
                load_record(target.state, table, p, key, value, self._skipped, offset, headers)
                n += 1
                if n % LOAD_SLICE == 0:
                    await loaded_slice()
                    if not self._current(target):
                        break
            else:
                target.positions[table] = max(after, start)
                target.records += len(records)
        self.metrics.rebuild_records.inc(n)
        await loaded_slice()
        if self.slice_pause_s:
            await asyncio.sleep(self.slice_pause_s)

    async def _settle(self, job: Rebuild) -> None:
        for _ in job.state.settle_steps(self.registry.settle_budget):
            await asyncio.sleep(0)
            if not self._current(job):
                return
        job.step = Step.WAITING

    async def _install_all(self, jobs: list[Rebuild]) -> None:
        """Put the read and settled partitions in service, but those whose changelogs grew
        since they were read (read on first)."""
        generation = self.registry.generation
        ends = await self._ends(jobs)
        ready = []
        for job in jobs:
            if not self._current(job):
                continue
            now = ends[job.partition]
            if any(now[t] > job.positions.get(t, 0) for t in TABLES):
                job.ends = now
                job.state.settled = False  # (the install settles what came since)
                job.step = Step.READING
            else:
                ready.append(job)
        if not ready:
            return
        async with self.registry.fence.batch:
            if self.registry.generation != generation or not self._installable():
                return
            ready = [job for job in ready if self._current(job)]
            for job in ready:
                self._install(job)
        for job in ready:
            self._resume(job.partition)

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
