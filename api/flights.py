"""One computation per query at a time, per worker (single flight).

Identical queries that miss at once share one computation: a request joins the flight of its
query (same key) when that flight will hold what it needs (``limit`` rows or more). A request
that must reflect every event processed when it arrived (``fresh``: ``force_refresh``, a live
stream's interval) never joins a flight that already started, which may have read the state
before it arrived: it joins (or opens) the flight queued behind it, which starts when the
running one ends. So a burst of identical requests costs at most two computations per worker,
one when none of them is ``fresh``. A key holds at most one running and one queued flight,
and is forgotten when both are done: what is kept is bounded by the requests waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

Work = Callable[[int | None, bool], Awaitable[T]]  # (limit, fresh) -> result


def covers(have: int | None, want: int | None) -> bool:
    """Whether the first ``have`` rows (None: all) hold the first ``want``."""
    return have is None or (want is not None and want <= have)


@dataclass(eq=False)
class _Flight(Generic[T]):
    limit: int | None
    fresh: bool
    work: Work[T]
    result: asyncio.Future[T] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    def widen(self, limit: int | None, fresh: bool) -> None:
        """Make this (not yet started) flight hold what one more request needs."""
        if not covers(self.limit, limit):
            self.limit = limit
        self.fresh = self.fresh or fresh


@dataclass(eq=False)
class _Slot(Generic[T]):
    running: _Flight[T]
    queued: _Flight[T] | None = None


class Flights(Generic[T]):
    """``run`` calls ``work(limit, fresh)`` once per flight; ``on_coalesced`` counts the
    requests that joined another's flight."""

    def __init__(self, on_coalesced: Callable[[], None] = lambda: None) -> None:
        self._slots: dict[Hashable, _Slot[T]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_coalesced = on_coalesced

    def __len__(self) -> int:
        return len(self._slots)

    async def run(self, key: Hashable, limit: int | None, fresh: bool, work: Work[T]) -> T:
        slot = self._slots.get(key)
        if slot is None:
            flight = _Flight(limit, fresh, work)
            self._slots[key] = _Slot(flight)
            task = asyncio.get_running_loop().create_task(self._fly(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif not fresh and covers(slot.running.limit, limit):
            flight = slot.running
            self._on_coalesced()
        elif slot.queued is not None:
            flight = slot.queued
            flight.widen(limit, fresh)
            self._on_coalesced()
        else:
            flight = slot.queued = _Flight(limit, fresh, work)
        # A waiter that goes away (its client disconnected) must not cancel the others' flight.
        return await asyncio.shield(flight.result)

    async def _fly(self, key: Hashable) -> None:
        """Run the key's flights one after another until none is queued."""
        slot = self._slots[key]
        try:
            while True:
                flight = slot.running
                try:
                    value = await flight.work(flight.limit, flight.fresh)
                except asyncio.CancelledError:
                    flight.result.cancel()
                    raise
                except BaseException as exc:  # every waiter gets it
                    flight.result.set_exception(exc)
                    flight.result.exception()  # (retrieved: no warning when none waits)
                else:
                    flight.result.set_result(value)
                if slot.queued is None:
                    break
                slot.running, slot.queued = slot.queued, None
        finally:
            del self._slots[key]
            if slot.queued is not None:
                slot.queued.result.cancel()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
