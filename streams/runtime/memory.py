"""The worker's memory: glibc's allocator and Python's garbage collector tuned for a process
that keeps millions of small long-lived objects and churns through many more short-lived ones,
and free memory given back to the system once the worker is idle (glibc only)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

import mode

logger = logging.getLogger(__name__)


def tune_malloc() -> None:
    """glibc malloc settings for a worker, before its threads start: two arenas (the main
    thread and the consumer's) instead of up to 8 per core, and allocations of 256 KiB and more
    (fetch responses, producer batches) always mapped on their own instead of carved from a
    heap that only grows. Same as MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=262144; a no-op where
    the C library is not glibc (BENCHMARKS.md, memory)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold, m_arena_max = -3, -8
    mallopt(m_arena_max, 2)
    mallopt(m_mmap_threshold, 256 * 1024)


class MallocTrimmer(mode.Service):
    """Gives the memory the C allocator holds free back to the system once the worker is idle
    (glibc only).

    Ingest frees as much as it keeps, and glibc hands memory back only from the top of its
    heap, so the pages of every hole below stay resident; ``malloc_trim(0)`` releases them. A
    trim holds the heap's lock while it walks the heap, so the event loop's allocations may
    wait for it: it runs only once nothing has happened for a second (``activity()`` unchanged)
    and once per idle period. Under sustained load glibc reuses the freed memory itself
    (BENCHMARKS.md, memory)."""

    def __init__(self, activity: Callable[[], Hashable], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.activity = activity
        try:
            self._trim: Any = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            self._trim = None

    @mode.Service.task
    async def _trimmer(self) -> None:
        if self._trim is None:
            return
        loop = asyncio.get_running_loop()
        # ``activity()`` changes with work done: records handled, a rebuild, a publication of
        # count changes (after a large load the last ones come seconds after its last record).
        seen: Hashable = None  # at the last look (every second)
        trimmed: Hashable = None  # at the last trim
        while not self.should_stop:
            await self.sleep(1.0)
            now = self.activity()
            if now == trimmed:
                continue  # nothing done since the last trim
            went_idle = now == seen
            seen = now
            if went_idle:
                trimmed = now
                started = time.perf_counter()
                gc.collect()  # garbage in reference cycles first (gen 2 runs rarely, tune_gc)
                await loop.run_in_executor(None, self._trim, 0)
                logger.debug("malloc_trim took %.1f ms",
                             (time.perf_counter() - started) * 1000)


def tune_gc() -> None:
    """Garbage collector thresholds for a worker: young collections every 20,000 net
    allocations instead of 700, middle ones every 20 young ones instead of 10; full ones at the
    default pace.

    A worker allocates and frees hundreds of container objects per event and keeps hundreds of
    thousands of long-lived ones, which every full collection walks, while it makes almost no
    reference cycles: with the defaults the collector took a large share of its time (and
    its pauses are waited out by every request). Full collections keep the default pace so
    that garbage in cycles does not pile up; an idle worker also collects before it trims
    (BENCHMARKS.md, memory)."""
    gc.set_threshold(20_000, 20, 10)
