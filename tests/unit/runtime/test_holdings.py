"""The figures probes and /metrics read (recommendations, segment families, programs held on the
active partitions) are counters kept up to date as the states change, never a walk: after any
history (events, withdrawals, duplicates, crashes and rebuilds from the changelog, aging sweeps,
partitions taken out of service and put back, stale partitions repaired) they equal a full walk
of the families. Also: the end of a rebuild, done in steps, gives the event loop turns and ends
exactly where the one-shot end does."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.domain.partition import PartitionState
from streams.runtime.partitions import PartitionRegistry, Phase
from streams.runtime.worker import holdings
from streams.tools.produce import Record, generate
from tests.support.memory_runtime import MemoryRuntime
from tests.unit.runtime.test_exactness import _deliveries

PARTITIONS = 3


def assert_counters_equal_a_walk(registry: PartitionRegistry) -> None:
    active = list(registry.active.values())
    for state in active:
        store = state.store
        assert store.recommendations() == sum(len(f.slots) for f in store.families.values())
        assert store.tally is registry.active.programs
    programs = {program for state in active for program in state.store.by_program}
    h = holdings(registry, {}, None)
    assert h.recommendations == sum(
        len(f.slots) for s in active for f in s.store.families.values())
    assert h.segments == sum(len(s.store.families) for s in active)
    assert h.programs == len(programs)
    assert set(registry.active.programs.holders) == programs
    assert registry.active.programs.holders == {
        program: sum(program in s.store.by_program for s in active) for program in programs}


# Steps between polls: 0 crash (committed or not), 1 an aging sweep of every partition, 2 a
# partition taken out of service and put back later, 3 a stale partition repaired (empty), 4
# nothing.
_steps = st.lists(st.tuples(st.integers(0, 4), st.booleans(), st.integers(0, PARTITIONS - 1)),
                  max_size=12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=_deliveries(span_ms=120), grace=st.integers(0, 60), batch=st.integers(1, 7),
       steps=_steps)
def test_maintained_counters_equal_a_full_walk_after_any_history(
        records: list[Record], grace: int, batch: int,
        steps: list[tuple[int, bool, int]]) -> None:
    asyncio.run(_run(records, grace, batch, steps))


async def _run(records: list[Record], grace: int, batch: int,
               steps: list[tuple[int, bool, int]]) -> None:
    runtime = MemoryRuntime(partitions=PARTITIONS, thresholds=(0.5,), grace_ms=grace)
    await runtime.start()
    for r in records:
        runtime.produce(r)
    for step, flag, partition in steps:
        handled = runtime.poll(batch)
        registry = runtime.registry
        assert_counters_equal_a_walk(registry)
        if step == 0:
            if flag:
                runtime.commit()
            await runtime.crash()
        elif step == 1:
            for state in registry.active.values():
                state.store.expire(budget=flag + 1)  # (a tiny budget: partial sweeps too)
        elif step == 2:  # out of service (as a standby copy takes it) while others age
            state = registry.active.pop(partition)
            assert state.store.tally is None
            for other in registry.active.values():
                other.store.expire()
            assert_counters_equal_a_walk(registry)
            if flag:
                state.store.expire()
            registry.active[partition] = state  # given back (a takeover of the copy)
        elif step == 3:
            registry.mark_stale({partition})
            assert_counters_equal_a_walk(registry)
            registry.finish_repair({partition})
        assert_counters_equal_a_walk(registry)
        if not handled:
            runtime.commit()
    registry = runtime.registry
    runtime.drain(batch)
    assert_counters_equal_a_walk(registry)
    for state in registry.active.values():
        state.store.expire()
    assert_counters_equal_a_walk(registry)
    registry.forget()
    assert_counters_equal_a_walk(registry)
    assert len(registry.active.programs) == 0


def _rebuilt(partitions: int = 2) -> tuple[PartitionRegistry, list[PartitionState]]:
    """A registry rebuilding ``partitions`` partitions of a few thousand records."""
    from streams.codec.input import parse_event

    registry = PartitionRegistry((0.5,))
    registry.begin_rebalance()
    states = [registry.target(p) for p in range(partitions)]
    for offset, r in enumerate(generate(6000, seed=5, programs=3, users=400, labels=30,
                                        assets=40, invalid_ratio=0)):
        ev = parse_event(r.value, r.timestamp_ms)
        states[offset % partitions].store.load(ev.family, ev.user_id, ev.weight, ev.in_history,
                                               ev.ts, offset, ev.name)
    return registry, states


async def test_the_end_of_a_rebuild_gives_the_event_loop_turns() -> None:
    registry, _ = _rebuilt()
    registry.settle_budget = 500
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        await registry.finish_recovery_in_steps({0, 1})
    finally:
        task.cancel()
    assert registry.phase is Phase.SERVING and set(registry.active) == {0, 1}
    assert turns > 10  # (6,000 slots and their families in 2 partitions, 500 a step)
    assert_counters_equal_a_walk(registry)


def test_settling_in_steps_ends_where_settling_at_once_does() -> None:
    _, at_once = _rebuilt()
    _, stepped = _rebuilt()
    for one, other in zip(at_once, stepped, strict=True):
        one.settle()
        steps = sum(1 for _ in other.settle_steps(budget=7))
        assert steps > 100
        assert not other.store.rebuilding and other.settled
        other.settle()  # a no-op right after the steps
        assert not other.settled
        assert one.store.dirty == other.store.dirty
        for program in ("program-0", "program-1", "program-2"):
            for basis in ("label", "asset"):
                for segment_type in ("growth", "base", "discovery"):
                    for m in (0.0, 0.5, 0.9):
                        assert (one.query(program, segment_type, basis, m)
                                == other.query(program, segment_type, basis, m))
        for key, fam in other.store.families.items():
            built = fam.indexes is not None
            assert built == (one.store.families[key].indexes is not None)


async def test_a_rebalance_during_the_steps_leaves_the_states_unsettled() -> None:
    registry, states = _rebuilt()
    registry.settle_budget = 500

    async def rebalance_soon() -> None:
        await asyncio.sleep(0)
        registry.begin_rebalance()

    task = asyncio.create_task(rebalance_soon())
    await registry.finish_recovery_in_steps({0, 1})
    await task
    assert registry.phase is Phase.REBALANCING and not registry.active
    assert not any(s.settled for s in states)
