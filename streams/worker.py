"""`segments worker`: wait for the broker, create missing topics, run the Faust worker with the
HTTP endpoint as one of its services."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import signal
import sys
import time
from typing import Any

import mode
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from api.server import create_web_app
from streams.app import SegmentStreamApp
from streams.consumer import offsets_report
from streams.segments import SegmentStat
from streams.settings import Settings

logger = logging.getLogger(__name__)


async def ensure_topics(settings: Settings, wait_s: float = 120.0) -> None:
    """Wait for the broker (with clear messages) and create the product's topics if missing."""
    deadline = time.monotonic() + wait_s
    admin: AIOKafkaAdminClient | None = None
    announced = False
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                    request_timeout_ms=5000)
        try:
            await admin.start()
            break
        except KafkaError as exc:
            await admin.close()
            if time.monotonic() > deadline:
                raise SystemExit(f"Kafka at {settings.bootstrap_servers} is not reachable: {exc}"
                                 ) from None
            if not announced:
                print(f"waiting for Kafka at {settings.bootstrap_servers} ...", file=sys.stderr)
                announced = True
            await asyncio.sleep(1.0)
    try:
        existing = set(await admin.list_topics())
        wanted = [settings.input_topic, settings.dlq_topic, settings.changes_topic,
                  settings.repartition_topic]
        new = [NewTopic(t, settings.partitions, settings.replication_factor)
               for t in wanted if t not in existing]
        # The changelogs too, before the consumer subscribes: a topic Faust creates only at
        # startup may be missing from the broker's first metadata answer; aiokafka then leaves
        # it out until its next periodic refresh (5 min) and the group leader's assignor skips
        # it ("Ignoring missing topic"), so its partitions are never assigned or recovered.
        new += [NewTopic(t, settings.partitions, settings.replication_factor,
                         topic_configs={"cleanup.policy": "compact"})
                for t in settings.changelog_topics if t not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was first
                await admin.create_topics(new)
    finally:
        await admin.close()


class _Backend:
    """Adapts the Faust app to the HTTP layer's SegmentsBackend protocol."""

    def __init__(self, core: SegmentStreamApp) -> None:
        self.core = core
        s = core.settings
        # Exactly the URL Faust advertises to the group (settings.advertised_url, normalized).
        self.self_url = str(core.app.conf.canonical_url)
        self.total_partitions = s.partitions
        self.cache_ttl_s = s.cache_ttl_s

    def is_ready(self) -> bool:
        return self.core.ready and not self.core.app.rebalancing

    def local_query(self, program_id: str, segment_type: str, segment_basis: str,
                    min_weight: float) -> tuple[list[SegmentStat], list[int]]:
        return self.core.local_query(program_id, segment_type, segment_basis, min_weight)

    def owners(self) -> dict[str, list[int]]:
        return self.core.owners()

    def recommendations(self) -> int:
        return sum(state.recommendations() for state in list(self.core.partitions.values()))


class WebService(mode.Service):
    """Runs the aiohttp endpoint alongside the Faust worker."""

    def __init__(self, core: SegmentStreamApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.core = core
        self.runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        s = self.core.settings
        app = create_web_app(_Backend(self.core), s.redis_url, namespace=s.app_id,
                             peer_timeout_s=s.peer_timeout_ms / 1000.0)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, s.web_host, s.web_port, reuse_address=True)
        await site.start()
        logger.warning("serving GET /segments on http://%s:%d", s.web_host, s.web_port)
        # `kill -USR1 <pid>`: log where each partition stands (what a stuck lag looks like
        # from inside; the fault tests' harness asks for it when a lag does not drain).
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR1, lambda: logger.warning("%s", offsets_report(self.core.app)))

    async def on_stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def tune_malloc() -> None:
    """glibc malloc settings for a worker, before its threads start: two arenas (the main
    thread and the consumer's) instead of up to 8 per core, and allocations of 256 KiB and
    more (fetch responses, producer batches) always mapped and unmapped on their own instead
    of from a heap that only grows (glibc raises that limit dynamically up to 32 MiB). Worker
    RSS with 1.2 million recommendations: -8 % after ingest, -13 % after a restart
    (BENCHMARKS.md). Same as MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=262144; no-op where
    the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold, m_arena_max = -3, -8
    mallopt(m_arena_max, 2)
    mallopt(m_mmap_threshold, 256 * 1024)


class MallocTrimmer(mode.Service):
    """Gives the memory the C allocator holds free back to the system within a second or two
    of the worker going idle (glibc only).

    Ingest frees as much as it keeps: fetched records, parsed events, encoded keys and values,
    producer batches, the columns' and dicts' old buffers when they grow. Python returns what
    it frees to glibc's heap, and glibc hands memory back to the system only from the top of
    the heap, so the pages of every hole below stay resident: a worker that ingested 1,000,000
    recommendations had an RSS of 499 MB, of which ``malloc_trim(0)`` (which also releases
    the free pages inside the heap) gave back 228 MB; one that rebuilt the same state from
    the changelog held 298 MB (BENCHMARKS.md). The trim runs in a thread (ctypes releases the
    GIL) but holds the heap's lock while it walks the heap (8-25 ms on that heap, ~200 ms now
    and then under load), so the event loop's allocations can wait for it: trimming every 5 s
    under load put freshness p99 at 227-364 ms against 169-193 ms without, side by side. So
    it trims only once idle (no record handled for a second): there a trim took 10 ms and
    delayed the loop by 1.4 ms at most. Under sustained load glibc reuses the freed memory."""

    def __init__(self, core: SegmentStreamApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.core = core
        try:
            self._trim: Any = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            self._trim = None

    @mode.Service.task
    async def _trimmer(self) -> None:
        if self._trim is None:
            return
        loop = asyncio.get_running_loop()
        # Work is records handled, a rebuild that made the worker ready, or a publication of
        # count changes (after a large load the last ones come seconds after its last record).
        seen: tuple[int, bool, int] | None = None  # at the last look (every second)
        trimmed: tuple[int, bool, int] | None = None  # at the last trim
        while not self.should_stop:
            await self.sleep(1.0)
            now = (self.core.processed, self.core.ready, self.core.publications)
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
    allocations instead of 700, middle ones every 20 young ones instead of 10 (full ones as
    by default: every 10 middle ones, when the long-lived objects grew by a quarter).

    A worker allocates and frees hundreds of container objects per event (fetched records,
    parsed events, keys, batches) and keeps hundreds of thousands of long-lived ones (each
    segment family's indexes), which every full collection walks: with the defaults,
    ingesting 200,000 events ran 957 young, 87 middle and 7 full collections, 1.15 s in all
    (~80 ms per full one, a pause every request and batch waits out), and they found ~600
    objects in reference cycles in all; with 20,000 / 20 / 100, 28 young, 1 middle and no full
    one, 0.38 s (BENCHMARKS.md). Full collections are kept at the default pace: in one of two
    bench runs with them 10x rarer the idle worker held 525 MB instead of 345 (garbage in
    cycles, uncollected, is the likely cause; not proven). The idle worker also collects
    before it trims (``MallocTrimmer``)."""
    gc.set_threshold(20_000, 20, 10)


def run_worker(settings: Settings | None = None) -> None:
    import faust

    tune_malloc()
    tune_gc()
    settings = settings or Settings.from_env()
    logging.basicConfig(level=settings.log_level,
                        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(settings))
    core = SegmentStreamApp(settings)
    worker = faust.Worker(core.app, WebService(core), MallocTrimmer(core),
                          loglevel=settings.log_level, quiet=True, redirect_stdouts=False,
                          loop=loop)
    # Faust's terminal spinner sets the root logger to DEBUG so that it spins on every record:
    # every aiokafka send then builds a log record. No spinner, and logs at the set level.
    worker.spinner = None
    worker.execute_from_commandline()
