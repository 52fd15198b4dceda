"""A pause of the worker (runtime/stalls.py) with a scripted clock: after a pause longer than the
threshold it neither serves nor writes for the hold time, whoever notices the pause first; a
batch handled across a pause writes nothing and is read again; shorter pauses change nothing."""

from __future__ import annotations

from streams.runtime.batches import BatchProcessor
from streams.runtime.ingest import IngestHandler
from streams.runtime.partitions import PartitionRegistry
from streams.runtime.sink import Sink
from streams.runtime.stalls import StallGuard
from tests.support.fakes import NAMES, PARTITIONS, FakeProducer, event_doc, keyed


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_long_pause_holds_for_the_hold_time_a_short_one_does_not() -> None:
    clock = Clock()
    guard = StallGuard(threshold_s=3.0, hold_s=2.0, clock=clock)
    clock.now += 2.9
    assert not guard.holding()
    clock.now += 3.5  # e.g. SIGSTOP
    assert guard.holding() and guard.stalls == 1
    clock.now += 1.9
    assert guard.holding()
    clock.now += 0.2
    assert not guard.holding()


def test_a_registry_does_not_serve_while_holding() -> None:
    clock = Clock()
    registry = PartitionRegistry((0.5,), StallGuard(3.0, 2.0, clock))
    registry.finish_recovery({0})
    assert registry.serving
    clock.now += 10
    assert not registry.serving
    clock.now += 2.5
    assert registry.serving


async def test_a_batch_handled_across_a_pause_writes_nothing() -> None:
    clock = Clock()
    guard = StallGuard(3.0, 2.0, clock)
    registry = PartitionRegistry((0.5,), guard)
    registry.finish_recovery(set(range(PARTITIONS)))
    producer = FakeProducer()

    def paused_then_checked() -> None:  # the pause falls between the handling and the writes
        clock.now += 10
        guard.check()

    processor = BatchProcessor(registry, IngestHandler(NAMES, PARTITIONS, 3_600_000),
                               Sink(lambda: producer, NAMES, 1_000_000, paused_then_checked),
                               lambda: None)  # type: ignore[arg-type, return-value]
    batch = [keyed(event_doc(f"u{i}"), offset=i) for i in range(20)]
    assert await processor(batch) == []
    assert producer.sent == []
    assert registry.stale  # their states ran ahead of their changelogs: rebuilt before use
