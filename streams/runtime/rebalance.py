"""What a worker does when its partitions are revoked (Faust's revocation signal, sent after it
stopped the flow) or it stops (Faust sends no revocation then): stop serving, wait for the
batch and the publication in flight, record what was published as published, and flush what
was produced, before the partitions can move. The next owner then reads changelogs that hold
everything this worker published."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from streams.runtime.partitions import PartitionRegistry
from streams.runtime.publisher import ChangePublisher


async def release(registry: PartitionRegistry, publisher: ChangePublisher,
                  flush: Callable[[], Awaitable[None]], *, stopping: bool = False) -> None:
    if stopping:
        registry.stop()
    else:
        registry.begin_rebalance()
    async with registry.fence.closed():
        await publisher.confirm()
        await flush()
