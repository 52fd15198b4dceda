"""What a worker does when its partitions are revoked (Faust's revocation signal, sent after it
stopped the flow) or it stops (Faust sends no revocation then): stop serving, wait for the
batch and the publication in flight, record what was published as published, and flush what
was produced, before the partitions can move. The next owner then reads changelogs that hold
everything this worker published. (Unless the group had already moved them: see ``release``.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from streams.runtime.partitions import PartitionRegistry
from streams.runtime.publisher import ChangePublisher


async def release(registry: PartitionRegistry, publisher: ChangePublisher,
                  flush: Callable[[], Awaitable[None]], *, stopping: bool = False,
                  still_member: bool = True) -> None:
    """``still_member``: False when the group no longer knew this worker (its session expired):
    its partitions may have had other owners meanwhile, who wrote to them. Then it writes
    nothing more for them and forgets their states, so that a partition assigned to it again
    is rebuilt from its changelogs instead of kept as it was."""
    if stopping:
        registry.stop()
    else:
        registry.begin_rebalance()
    async with registry.fence.closed():
        if still_member:
            await publisher.confirm()
        await flush()
        if not still_member:
            registry.forget()
