"""This worker's partitions, the phase it is in, and the fence that keeps partitions from moving
while work on them is in flight.

Phases (``Phase``): a worker starts ``STARTING`` (no assignment yet); every rebalance puts it in
``REBALANCING`` (its partitions revoked, the new ones assigned); once Faust's recovery has
brought the partitions it kept or took over from a standby copy up to date it is ``SERVING``: it
handles records, publishes changes and answers queries for its active partitions, while the
others are rebuilt in the background (runtime/rebuilds.py) and put in service one by one;
``STOPPING`` at shutdown. Outside ``SERVING`` it does none of the three.

Per partition, a state is *active* (in service), *recovering* (a taken-over standby copy or a
repair, being brought up to date, not queried), *rebuilding* (rebuilt in the background,
runtime/rebuilds.py: its input paused, not queried, not published) or *stale* (its durable
writes failed, so its state ran ahead of its changelog: out of service until rebuilt,
``Recovery.repair``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from streams.codec.names import EMITTED_COUNTS
from streams.domain.partition import PartitionState
from streams.domain.store import DEFAULT_GRACE_MS, SETTLE_BUDGET
from streams.domain.tally import ProgramTally
from streams.runtime.stalls import StallGuard

logger = logging.getLogger(__name__)


class Phase(enum.Enum):
    STARTING = "starting"
    REBALANCING = "rebalancing"
    SERVING = "serving"
    STOPPING = "stopping"


class Fence:
    """Held while a batch is handled / while changes are published; a revocation takes both, so
    partitions move only once the work in flight on them is done (two locks: the batch and
    the publication never wait for each other). Order: batch, then publish."""

    def __init__(self) -> None:
        self.batch = asyncio.Lock()
        self.publish = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def closed(self) -> AsyncIterator[None]:
        async with self.batch, self.publish:
            yield


class ActiveStates(dict[int, PartitionState]):
    """The states in service, by partition: a dict that attaches every state put in it to
    ``programs`` and detaches every state taken out, so that the programs held are counted
    as the stores change, not by a walk at each scrape."""

    def __init__(self) -> None:
        super().__init__()
        self.programs = ProgramTally()

    def _attach(self, state: PartitionState) -> None:
        store = state.store
        if store.tally is not self.programs:
            store.tally = self.programs
            self.programs.add(store.by_program)

    def _detach(self, state: PartitionState) -> None:
        store = state.store
        if store.tally is self.programs:
            store.tally = None
            self.programs.remove(store.by_program)

    def __setitem__(self, partition: int, state: PartitionState) -> None:
        old = self.get(partition)
        if old is not None and old is not state:
            self._detach(old)
        super().__setitem__(partition, state)
        self._attach(state)

    def __delitem__(self, partition: int) -> None:
        self._detach(self[partition])
        super().__delitem__(partition)

    def pop(self, partition: int, *default: Any) -> Any:
        if partition in self:
            self._detach(self[partition])
        return super().pop(partition, *default)

    def popitem(self) -> tuple[int, PartitionState]:
        partition, state = super().popitem()
        self._detach(state)
        return partition, state

    def clear(self) -> None:
        for state in self.values():
            self._detach(state)
        super().clear()

    def update(self, states: Mapping[int, PartitionState]) -> None:  # type: ignore[override]
        for partition, state in states.items():
            self[partition] = state

    def setdefault(self, partition: int, state: PartitionState) -> PartitionState:
        if partition not in self:
            self[partition] = state
        return self[partition]


class PartitionRegistry:
    """The partition states of one worker."""

    settle_budget = SETTLE_BUDGET  # work per step of the end of a rebuild (settle_in_steps)

    def __init__(self, thresholds: tuple[float, ...], stalls: StallGuard | None = None,
                 grace_ms: int = DEFAULT_GRACE_MS) -> None:
        self.thresholds = thresholds
        self.grace_ms = grace_ms
        self.stalls = stalls
        self.phase = Phase.STARTING
        self.generation = 0  # rebalances begun
        self.served = False  # was SERVING once: answers can come from it (GET /readyz)
        self.active = ActiveStates()
        self.recovering: dict[int, PartitionState] = {}
        self.stale: set[int] = set()
        # Assigned partitions rebuilt in the background (runtime/rebuilds.py owns their states).
        self.rebuilding: set[int] = set()
        # table -> partition -> the last changelog offset the partition's state holds.
        self.read_upto: dict[str, dict[int, int]] = {}
        self.fence = Fence()

    @property
    def serving(self) -> bool:
        """Handles records, publishes and answers (not right after a pause: runtime/stalls.py)."""
        return self.phase is Phase.SERVING and not (self.stalls and self.stalls.holding())

    def new_state(self, partition: int, rebuilding: bool = False) -> PartitionState:
        return PartitionState(partition, self.thresholds, rebuilding, self.grace_ms)

    # -- rebalances ------------------------------------------------------------------------------
    def begin_rebalance(self) -> None:
        """Partitions are moving: stop serving. Stale partitions are forgotten as such: the
        rebalance rebuilds every partition it assigns that is not kept."""
        if self.phase is not Phase.STOPPING:
            self.phase = Phase.REBALANCING
        self.generation += 1
        self.stale.clear()

    def keep_only(self, assigned: set[int]) -> None:
        """Forget the states of partitions this worker no longer owns."""
        for states in (self.active, self.recovering):
            for p in [p for p in states if p not in assigned]:
                del states[p]
        for offsets in self.read_upto.values():
            for p in [p for p in offsets if p not in assigned]:
                del offsets[p]

    def forget(self) -> None:
        """Drop every state: they may be behind their changelogs (the group moved them)."""
        if self.active or self.recovering:
            logger.warning("forgetting the states of partitions %s: the group may have moved "
                           "them meanwhile", sorted({*self.active, *self.recovering}))
        self.active.clear()
        self.recovering.clear()
        self.stale.clear()
        self.read_upto.clear()

    def persisted_offset(self, table: str, partition: int) -> int | None:
        """The last offset of ``table``'s changelog partition that its state holds (Faust's
        recovery reads only what comes after)."""
        return self.read_upto.get(table, {}).get(partition)

    def remember(self, table: str, partition: int, offset: int) -> None:
        self.read_upto.setdefault(table, {})[partition] = offset

    def target(self, partition: int) -> PartitionState:
        """Where a changelog record of ``partition`` goes while recovering: the active state
        (a kept partition), else a state being rebuilt."""
        state = self.active.get(partition)
        if state is None:
            state = self.recovering.get(partition)
            if state is None:
                state = self.recovering[partition] = self.new_state(partition, rebuilding=True)
        return state

    def finish_recovery(self, assigned: set[int]) -> None:
        """Every assigned partition is rebuilt, but those rebuilt in the background: put them
        in service and serve."""
        self.keep_only(assigned)
        recovered = self.recovering
        self.recovering = {}
        for p in assigned:
            if p not in self.active and p not in recovered and p not in self.rebuilding:
                recovered[p] = self.new_state(p)  # an empty partition
        self.install(recovered)
        if self.phase is not Phase.STOPPING:
            self.phase = Phase.SERVING
            # Ready once every partition of the first assignment was in service (from then on
            # a partition moving or rebuilding is answered from copies or last answers).
            if not self.rebuilding:
                self.served = True

    async def settle_in_steps(self, states: Iterable[PartitionState]) -> bool:
        """The end of the rebuild of ``states`` (``PartitionState.settle``) in steps, the event
        loop getting a turn between them (probes, heartbeats, answers); False if a rebalance
        began meanwhile (then they are not settled: the next rebalance decides)."""
        generation = self.generation
        states = list(states)
        for state in states:
            for _ in state.settle_steps(self.settle_budget):
                await asyncio.sleep(0)
                if self.generation != generation:
                    for s in states:
                        s.settled = False
                    return False
        return True

    async def finish_recovery_in_steps(self, assigned: set[int]) -> None:
        """``finish_recovery``, the rebuilt states settled in steps first."""
        if await self.settle_in_steps(
                [s for p, s in self.recovering.items() if p in assigned and p not in self.active]):
            self.finish_recovery(assigned)

    def install(self, states: dict[int, PartitionState]) -> None:
        """Put rebuilt partitions in service."""
        n = 0
        emitted = self.read_upto.get(EMITTED_COUNTS, {})
        for p, state in states.items():
            state.settle()
            # The rebuild read its emitted-counts changelog partition up to this offset (none
            # remembered: an empty partition); this worker writes the next one (domain/ledger.py).
            state.ledger.next_offset = emitted.get(p, -1) + 1
            n += state.recommendations()
            if state.ledger.late_records:
                logger.warning("partition %d: %d emitted-counts records landed at other "
                               "offsets than their writers expected (written after records "
                               "they had not read); their segments are published again", p,
                               state.ledger.late_records)
                state.ledger.late_records = 0
        self.active.update(states)
        if states:
            logger.info("rebuilt %d partitions (%d recommendations)", len(states), n)
            # The rebuilt state is long-lived and acyclic (freed by reference counting when a
            # partition is dropped): keep it out of the garbage collector's full passes, which
            # would otherwise walk every recommendation now and then.
            gc.freeze()

    # -- failed writes -------------------------------------------------------------------------
    def mark_stale(self, partitions: set[int]) -> set[int]:
        """Take partitions whose durable writes failed out of service; returns those that were
        in service (or being rebuilt) here."""
        taken = set()
        for p in partitions:
            for offsets in self.read_upto.values():
                offsets.pop(p, None)  # the next assignment reads it all
            if p in self.active or p in self.recovering:
                self.active.pop(p, None)
                self.recovering.pop(p, None)
                self.stale.add(p)
                taken.add(p)
        return taken

    def finish_repair(self, partitions: set[int]) -> None:
        """Stale partitions rebuilt from their changelogs: back in service."""
        self.install({p: self.recovering.pop(p) if p in self.recovering else self.new_state(p)
                      for p in partitions})
        self.stale -= partitions

    def abort_repair(self, partitions: set[int]) -> None:
        """A repair that failed or was interrupted: what it read is dropped, and so is how far
        it read (kept, it would have the next assignment replay only what came after, into an
        empty state)."""
        for p in partitions:
            self.recovering.pop(p, None)
            for offsets in self.read_upto.values():
                offsets.pop(p, None)

    def stop(self) -> None:
        self.phase = Phase.STOPPING

    def recommendations(self) -> int:
        """Recommendations held on the active partitions: O(partitions)."""
        return sum(state.recommendations() for state in list(self.active.values()))

    def segments(self) -> int:
        return sum(state.store.segments() for state in list(self.active.values()))

    def programs(self) -> int:
        """Programs with families on the active partitions: O(1)."""
        return len(self.active.programs)

    def readiness(self) -> str | None:
        """None when this worker can answer GET /segments with consistency=any (it has served
        once: from then on, while partitions move, answers come from owners, standby copies or
        last answers); else why not."""
        if self.phase is Phase.STOPPING:
            return "stopping"
        if not self.served:
            if self.phase is Phase.STARTING:
                return "starting: no partition assigned yet"
            if self.rebuilding:
                return (f"rebuilding partitions {sorted(self.rebuilding)} of its first "
                        f"assignment ({len(self.active)} in service)")
            return "rebuilding the partitions of its first assignment"
        return None
