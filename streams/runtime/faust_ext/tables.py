"""Faust tables whose changelogs feed the worker's own state instead of Faust's stores.

Written against faust-streaming 0.15.3 (the overridden hooks: ``Table.persisted_offset``,
``apply_changelog_batch``, ``on_recovery_completed``, ``on_rebalance``; ``TableManager.on_start``
and its private ``_update_channels``).

Writes go to the changelog through the sink; on assignment a ``ChangelogListener`` (the
worker's recovery) rebuilds what it needs and reports how far it read as the persisted
offset, so Faust's recovery only replays what came after, through the listener too. Faust's
own store stays empty: a recommendation is held once in memory, not twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import faust
from faust.tables.manager import TableManager
from faust.types import TP, EventT

from streams.codec.durable import RecordHeaders


class ChangelogListener(Protocol):
    def persisted_offset(self, table: str, partition: int) -> int | None: ...
    def load(self, table: str, partition: int, key: bytes | None,
             value: bytes | None, offset: int | None = None,
             headers: RecordHeaders | None = None) -> None: ...
    async def on_rebalance(self, table: str, assigned: set[int]) -> None: ...
    async def on_recovered(self, table: str, assigned: set[int]) -> None: ...


class ChangelogTable(faust.Table[bytes, bytes]):
    def __init__(self, app: Any, *, listener: ChangelogListener, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._listener = listener

    def persisted_offset(self, tp: TP) -> int | None:
        return self._listener.persisted_offset(self.name, tp.partition)

    def apply_changelog_batch(self, batch: Iterable[EventT[Any]]) -> None:
        load = self._listener.load
        for event in batch:
            msg = event.message
            load(self.name, msg.partition, msg.key, msg.value, msg.offset, msg.headers)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        await self._listener.on_recovered(self.name, {tp.partition for tp in active_tps})

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP],
                           newly_assigned: set[TP], generation_id: int = 0) -> None:
        topic = self.changelog_topic.get_topic_name()
        active = {tp.partition for tp in self.app.assignor.assigned_actives()
                  if tp.topic == topic}
        await self._listener.on_rebalance(self.name, active)
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)


class NoDelayTableManager(TableManager):
    """Faust's table manager without its fixed one-second sleep at start (it gives tables
    declared late a chance to register; ours are declared before the worker starts)."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()
