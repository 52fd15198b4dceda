"""The group's lag (runtime/group_lag.py) over a scripted broker: per partition, the records after
the committed offsets of both topics; readings shared by concurrent callers; a caller always
gets figures read after it asked; a failed reading keeps the last figures and is not retried
at once."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, cast

from aiokafka import TopicPartition

from streams.runtime.group_lag import GroupLag
from tests.support.fakes import NAMES


@dataclass
class Committed:
    offset: int


class Broker:
    def __init__(self) -> None:
        self.ends: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, Committed] = {}
        self.reads = 0
        self.failing = False
        self.gate = asyncio.Event()
        self.gate.set()
        self.answered = asyncio.Event()

    # the consumer
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.reads += 1
        await self.gate.wait()
        if self.failing:
            raise OSError("broker away")
        self.answered.set()
        return {tp: self.ends.get(tp, 0) for tp in tps}

    # the committed offsets
    async def __call__(self) -> dict[TopicPartition, Committed]:
        return dict(self.committed)

    async def close(self) -> None: ...


def lag_of(broker: Broker) -> GroupLag:
    return GroupLag(NAMES, 2, lambda: cast(Any, broker), cast(Any, broker))


async def test_lag_per_partition_over_both_topics() -> None:
    broker = Broker()
    inp, rep = NAMES.batch_topics
    broker.ends = {TopicPartition(inp, 0): 10, TopicPartition(rep, 0): 4,
                   TopicPartition(inp, 1): 7}
    broker.committed = {TopicPartition(inp, 0): Committed(8), TopicPartition(inp, 1): Committed(-1)}
    lag = lag_of(broker)
    assert (lag.of(0), lag.ends) == (0, -1)  # not read yet
    await lag.refresh()
    assert (lag.of(0), lag.of(1), lag.ends) == (2 + 4, 7, 21)



async def test_input_of_another_partition_count_counts_for_every_partition() -> None:
    """An input record not yet read may land on any partition once repartitioned."""
    broker = Broker()
    inp, rep = NAMES.batch_topics
    broker.ends = {TopicPartition(inp, 0): 5, TopicPartition(inp, 2): 3,
                   TopicPartition(rep, 1): 4}
    lag = GroupLag(NAMES, 2, lambda: cast(Any, broker), cast(Any, broker),
                   input_partitions=lambda: 3)
    await lag.refresh()
    assert (lag.of(0), lag.of(1), lag.ends) == (8, 8 + 4, 12)

async def test_callers_share_readings_and_get_figures_read_after_they_asked() -> None:
    broker = Broker()
    lag = lag_of(broker)
    broker.gate.clear()
    first = asyncio.create_task(lag.refresh())
    await asyncio.sleep(0.01)
    second = asyncio.create_task(lag.refresh())  # asked after the first reading started
    await asyncio.sleep(0.01)
    assert broker.reads == 1
    broker.gate.set()
    await asyncio.gather(first, second)
    assert broker.reads == 2  # the second caller waited for a reading of its own
    together = [asyncio.create_task(lag.refresh()) for _ in range(5)]
    await asyncio.gather(*together)
    assert broker.reads == 3


async def test_a_failed_reading_keeps_the_figures_and_is_not_retried_at_once() -> None:
    broker = Broker()
    broker.ends = {TopicPartition(NAMES.batch_topics[0], 1): 5}
    lag = lag_of(broker)
    await lag.refresh()
    broker.failing = True
    broker.ends = {TopicPartition(NAMES.batch_topics[0], 1): 9}
    await lag.refresh()
    await lag.refresh()
    assert (broker.reads, lag.of(1)) == (2, 5)



def test_a_caller_between_the_end_of_a_reading_and_its_callback_does_not_spin() -> None:
    """A caller woken in the same turn as a reading ends, before the reading's done callback
    runs, starts a new reading instead of awaiting the done one (which never yields: it would
    spin and block the worker's loop). Run in a thread: a spin cannot be interrupted."""

    async def scenario() -> int:
        broker = Broker()
        lag = lag_of(broker)

        async def late_caller() -> None:
            await broker.answered.wait()  # woken before the reading's task finishes
            await lag.refresh()

        late = asyncio.ensure_future(late_caller())
        await lag.refresh()
        await late
        return broker.reads

    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(scenario())),
                              daemon=True)
    thread.start()
    thread.join(10)
    assert result == [2], "refresh() spun"
