"""`segments worker`: ``build_worker`` is the one composition root.

Data flow (docs/DESIGN.md): input -> the batch processor (validate; invalid -> dead letters;
repartition by segment family) -> the partition's state (last-writer-wins durable records in the
``recommendations`` changelog, derived threshold indexes) -> the change publisher (timer) ->
count changes; every worker serves GET /segments (api/) from the query service.

Faust provides the consumer group, the co-partitioned assignment, table recovery, offsets and
commits; faust_ext/ adapts it where its public API does not reach.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import faust
import mode
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient
from faust.types import TP

from api.app import create_web_app
from api.auth import ClusterAuth
from api.keys import KeyRing
from streams.codec.names import RECOMMENDATIONS, TABLES, Names
from streams.runtime import faust_ext
from streams.runtime.batches import BatchProcessor
from streams.runtime.exceptions import TopicMismatch
from streams.runtime.faust_ext.assignor import standby_aware
from streams.runtime.faust_ext.consumer import (
    consumer_lag,
    install,
    offsets_report,
    resume,
    still_member,
)
from streams.runtime.faust_ext.producer import idempotent, raw_producer
from streams.runtime.faust_ext.tables import ChangelogTable, NoDelayTableManager
from streams.runtime.faust_ext.worker import quiet_worker
from streams.runtime.group_lag import GroupLag, GroupOffsets
from streams.runtime.ingest import IngestHandler
from streams.runtime.kafka_clients import client_options, faust_options
from streams.runtime.memory import MallocTrimmer, tune_gc, tune_malloc
from streams.runtime.metrics import Holdings, RuntimeMetrics
from streams.runtime.partitions import PartitionRegistry, Phase
from streams.runtime.publisher import SPREAD, ChangePublisher
from streams.runtime.query import Cluster, QueryService
from streams.runtime.rebalance import release
from streams.runtime.rebuilds import Rebuilds
from streams.runtime.recovery import ChangelogReader, Recovery, consumer_factory
from streams.runtime.sink import Sink
from streams.runtime.stalls import StallGuard
from streams.runtime.standby import StandbyReplicas, holders
from streams.runtime.topics import TopicReport, ensure_topics
from streams.settings import Settings

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
SESSION_TIMEOUT_S = 6.0  # the shortest session (a dynamic member's): the stall guard's measure
HEARTBEAT_S = 1.0
REBALANCE_TIMEOUT_S = 60.0  # under broker_request_timeout (90 s): JoinGroup waits this long


@dataclass
class Worker:
    """One worker: the Faust app and the collaborators ``build_worker`` wired into it."""

    settings: Settings
    faust_app: faust.App
    registry: PartitionRegistry
    processor: BatchProcessor
    publisher: ChangePublisher
    recovery: Recovery
    query: QueryService
    services: tuple[mode.Service, ...]

    def run(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run until stopped (SIGTERM, Ctrl-C)."""
        quiet_worker(self.faust_app, *self.services, loop=loop,
                     loglevel=self.settings.log_level).execute_from_commandline()

    def activity(self) -> tuple[int, bool, int]:
        """Changes whenever the worker did something (records, a rebuild, a publication)."""
        return (self.processor.stats.processed, self.registry.serving,
                self.publisher.publications)


def _faust_app(s: Settings) -> faust.App:
    return faust.App(
        s.app_id,
        broker=s.kafka_url,
        store="memory://",
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor or 1,  # resolved by run_worker
        # No standbys of Faust's: the worker keeps its own (runtime/standby.py), from its own
        # batched readers, placed where every worker can tell (the owner's successors).
        table_standby_replicas=0,
        web_enabled=False,
        canonical_url=s.advertised_url,
        datadir=s.data_dir or None,
        # A member that stops heartbeating is out after 6 s, the brokers' default minimum
        # (group.min.session.timeout.ms); peers stop asking it at once (api/fanout.py) and
        # answer from standbys meanwhile. Heartbeats at a sixth of it survive a lost one or two.
        # A static member (SEGMENTS_INSTANCE_ID) keeps a longer session by default: it never
        # leaves the group when it stops (aiokafka sends no LeaveGroup with an instance id), so
        # a restart within the session gets its partitions back with no rebalance.
        broker_session_timeout=s.session_timeout_ms / 1000.0,
        consumer_group_instance_id=s.instance_id or None,
        broker_heartbeat_interval=HEARTBEAT_S,
        # How long the group waits for a member to rejoin a rebalance. Rebuilds run in the
        # background (runtime/rebuilds.py), so a member rejoins at once; a slow Faust recovery
        # (a standby copy taken over, far behind) still fits in it.
        broker_rebalance_timeout=REBALANCE_TIMEOUT_S,
        # Offsets are committed every second (and at every rebalance and stop); the fetch loop
        # also stops to commit after this many acks (a producer flush and a commit, awaited).
        broker_commit_every=100_000,
        broker_commit_interval=1.0,
        # Records go out as whole batches (runtime/sink.py): a linger only delays them. A
        # batch's writes are awaited before the next is fetched, so it adds to every probe's
        # wait; a millisecond still lets a batch's partitions share one request.
        producer_linger=0.001,
        producer_acks=-1,
        # A write not acknowledged in this time fails, and so does the batch that made it (read
        # again), instead of waiting up to Faust's default of 20 minutes.
        producer_request_timeout=s.produce_timeout_ms / 1000.0,
        producer_max_batch_size=512 * 1024,
        stream_buffer_maxsize=4096,
        # Bounds one fetched batch and the memory a backlog's fetches take; larger batches cost
        # less per record (BENCHMARKS.md, ingest).
        broker_max_poll_records=10_000,
        consumer_max_fetch_size=4 * 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=3600.0,
        logging_config=None,
        TableManager=NoDelayTableManager,
        **faust_options(s.kafka_security),
    )


def build_worker(settings: Settings, topics: TopicReport | None = None) -> Worker:
    """The worker for ``settings``, every collaborator built here and passed in; ``topics``:
    what the check of the topics at start found."""
    names: Names = settings.names
    app = _faust_app(settings)
    idempotent(app)
    # A pause of half the session might have cost the membership: writes wait for a heartbeat.
    stalls = StallGuard(threshold_s=SESSION_TIMEOUT_S / 2, hold_s=2 * HEARTBEAT_S)
    registry = PartitionRegistry(settings.watch_thresholds, stalls, settings.grace_ms)

    self_url = str(app.conf.canonical_url)
    kafka = {"bootstrap_servers": settings.bootstrap_servers,
             **client_options(settings.kafka_security)}

    def lag() -> dict[tuple[str, int], int]:
        # (Also while a pause holds the worker back: its records are behind all the same.)
        return consumer_lag(app) if registry.phase is Phase.SERVING else {}

    recommendations_changelog = names.changelog_topic(RECOMMENDATIONS)
    # A departed owner's partitions go to the worker keeping their standby copy (contract §11).
    standby_aware(app, recommendations_changelog, settings.partitions,
                  settings.standby_replicas)

    def owners() -> dict[str, list[int]]:
        meta = app.assignor.table_metadata(recommendations_changelog)
        return {str(url): sorted(tps.get(recommendations_changelog, []))
                for url, tps in meta.items()}

    group_lag = GroupLag(names, settings.partitions, consumer_factory(**kafka),
                         GroupOffsets(lambda: AIOKafkaAdminClient(**kafka), settings.app_id),
                         input_partitions=lambda: app.consumer.topic_partitions(
                             names.input_topic))
    standbys: StandbyReplicas | None = None
    if settings.standby_replicas:
        def wanted() -> set[int]:
            placed = holders(owners(), settings.standby_replicas)
            return {p for p, urls in placed.items() if self_url in urls}

        standbys = StandbyReplicas(
            registry, names, wanted, consumer_factory(**kafka), group_lag,
            lambda table, partition, error: recovery.skipped(table, partition, error))
    metrics = RuntimeMetrics(lambda: holdings(registry, lag(), standbys))
    if topics is not None:
        metrics.topic_config_warnings((w.topic, w.setting) for w in topics.warnings)

    async def highwaters(topic: str, partitions: set[int]) -> dict[int, int]:
        ends = await app.consumer.highwaters(*(TP(topic, p) for p in sorted(partitions)))
        return {tp.partition: end for tp, end in ends.items()}

    reader = ChangelogReader(consumer_factory(**kafka))
    rebuilds = Rebuilds(registry, reader, names,
                        lambda table, partition, error: recovery.skipped(table, partition, error),
                        resume=lambda partition: resume(app, partition), metrics=metrics,
                        slice_pause_s=settings.test_only_rebuild_slice_pause_ms / 1000.0)
    recovery = Recovery(registry, reader, names, highwaters, metrics, standbys, rebuilds)

    async def rebuild_in_background() -> None:
        try:
            await rebuilds.run()
        finally:
            await reader.close()
    for table in TABLES:
        app.tables.add(ChangelogTable(
            app, name=table, listener=recovery, key_type=bytes, value_type=bytes,
            partitions=settings.partitions, recovery_buffer_size=10_000))
    sink = Sink(lambda: raw_producer(app), names, app.conf.producer_max_request_size,
                check=stalls.check, delivery_timeout_s=settings.produce_timeout_ms / 1000)

    def input_copartitioned() -> bool:
        # The partition counts the group's assignment was computed from (an unknown count:
        # not co-partitioned, which is always correct, at the cost of a repartition hop).
        return app.consumer.topic_partitions(names.input_topic) == settings.partitions

    processor = BatchProcessor(
        registry, IngestHandler(names, settings.partitions, settings.max_future_ms), sink,
        recovery.repair, metrics, input_copartitioned=input_copartitioned)
    publisher = ChangePublisher(registry, sink, names, rebalancing=lambda: app.rebalancing,
                                metrics=metrics, interval_s=settings.change_interval_ms / 1000.0,
                                spread=SPREAD)

    # The two agents subscribe the worker to their topics; the batched consumer hands those
    # topics' records to the processor, never to an agent's stream.
    for agent, topic in zip(("ingest", "aggregate"), names.batch_topics, strict=True):
        channel = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                            value_serializer="raw", partitions=settings.partitions,
                            internal=topic == names.repartition_topic)
        app.agent(channel, name=agent)(_unreachable)
    def held(topic: str, partition: int) -> bool:
        # An input partition holds the records of its own number's state only when the input
        # is co-partitioned (else they are all repartitioned: no state needed where read).
        return rebuilds.holds(partition) and (topic != names.input_topic
                                              or input_copartitioned())

    install(app, names.batch_topics, processor, held)

    async def publish_changes() -> None:
        # Not app.timer: a tick outlasting its short period is normal under load, and mode logs
        # every such tick as a warning. Ticks keep their pace (a long one is followed at once);
        # each partition's turns are timed by the publisher.
        loop = asyncio.get_running_loop()
        period = publisher.interval_s / publisher.spread
        next_at = loop.time()
        while not app.should_stop:
            next_at = max(next_at + period, loop.time())
            await app.sleep(next_at - loop.time())
            if app.should_stop:
                break
            await publisher.tick()

    app.task(publish_changes)
    app.timer(1.0, name="repair-partitions")(recovery.repair_stale)

    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        member = still_member(app)
        await release(registry, publisher, app.producer.flush, still_member=member)
        if standbys is not None:
            await standbys.released(registry, member)

    async def on_stopping(sender: Any, *args: Any, **kwargs: Any) -> None:
        rebuilds.stop()
        await release(registry, publisher, app.producer.flush, stopping=True)

    app.on_partitions_revoked.connect(cast(Any, on_revoked))
    app.on_before_shutdown.connect(cast(Any, on_stopping))

    query = QueryService(
        registry, Cluster(self_url, settings.partitions, settings.cache_ttl_s,
                          settings.standby_replicas), owners,
        rebalancing=lambda: app.rebalancing, lag=lag,
        standbys=standbys, group_lag=group_lag)
    worker = Worker(settings, app, registry, processor, publisher, recovery, query, ())
    keys = KeyRing(settings.api_keys_file) if settings.api_keys_file else None
    cluster = (ClusterAuth(settings.cluster_secret, self_url,
                           previous=settings.cluster_secret_previous)
               if settings.cluster_secret else None)
    if settings.web_host not in LOOPBACK_HOSTS and keys is None:
        logger.warning("listening on %s without API keys: anyone who can reach it reads every "
                       "program (set SEGMENTS_API_KEYS_FILE; SECURITY.md)", settings.web_host)
    web_app = create_web_app(query, settings.redis_url, namespace=settings.app_id,
                             peer_timeout_s=settings.peer_timeout_ms / 1000.0,
                             registry=metrics.registry,
                             stream_interval_s=settings.stream_interval_ms / 1000.0,
                             stream_max_clients=settings.stream_max_clients,
                             keys=keys, cluster=cluster)
    services: list[mode.Service] = [WebService(web_app, settings, app),
                                     MallocTrimmer(worker.activity), Background(group_lag.run),
                                     Background(rebuild_in_background),
                                     Background(stalls.run)]
    if standbys is not None:
        services.append(Background(standbys.run))
    worker.services = tuple(services)
    return worker


def holdings(registry: PartitionRegistry, lag: dict[tuple[str, int], int],
             standbys: StandbyReplicas | None) -> Holdings:
    """What the worker holds, for the metrics' gauges: counters kept up to date as the states
    change, read in O(partitions) (never a walk of the families)."""
    states = list(registry.active.values())
    return Holdings(recommendations=registry.recommendations(), segments=registry.segments(),
                    programs=registry.programs(), active_partitions=len(states),
                    standby_partitions=len(standbys.standbys) if standbys else 0, lag=lag,
                    watermarks={p: wm for p, s in registry.active.items()
                                if (wm := s.store.watermark) is not None})


class Background(mode.Service):
    """Runs a coroutine alongside the Faust worker until it stops (the standby copies' reader,
    the group lag's)."""

    def __init__(self, run: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run = run

    @mode.Service.task
    async def _run(self) -> None:
        await self.run()


async def _unreachable(stream: Any) -> Any:
    """Body of the subscribing agents: a record reaching one would be lost, so it stops the
    worker instead."""
    async for _ in stream:  # pragma: no cover
        raise RuntimeError("a record of the batch handler's topics reached an agent")
        yield None


class WebService(mode.Service):
    """Runs the HTTP API alongside the Faust worker."""

    def __init__(self, web_app: web.Application, settings: Settings, faust_app: faust.App,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.web_app = web_app
        self.settings = settings
        self.faust_app = faust_app
        self.runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        s = self.settings
        self.runner = web.AppRunner(self.web_app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, s.web_host, s.web_port, reuse_address=True)
        await site.start()
        logger.warning("serving GET /segments on http://%s:%d", s.web_host, s.web_port)
        # `kill -USR1 <pid>`: log where each partition stands and what every task awaits (what
        # a stuck lag or rebalance looks like from inside; the fault tests' harness asks for it
        # when a lag does not drain).
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR1, lambda: logger.warning("%s\n%s", offsets_report(self.faust_app),
                                                   tasks_report()))

    async def on_stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def tasks_report() -> str:
    """Every asyncio task of the worker and where it waits (the innermost calls of its await
    chain)."""
    lines = []
    for task in asyncio.all_tasks():
        frames: list[Any] = []
        coro: Any = task.get_coro()
        while coro is not None and len(frames) < 64:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is None:
                break
            frames.append(frame)
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        where = " <- ".join(f"{f.f_code.co_name} ({f.f_code.co_filename.rsplit('/', 2)[-1]}:"
                            f"{f.f_lineno})" for f in reversed(frames[-5:]))
        lines.append(f"  {task.get_name()}: {where or '?'}")
    return f"tasks ({len(lines)}):\n" + "\n".join(sorted(lines))


def run_worker(settings: Settings | None = None) -> None:
    tune_malloc()
    tune_gc()
    settings = settings or Settings.from_env()
    logging.basicConfig(level=settings.log_level,
                        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    for problem in faust_ext.problems():
        logger.error("faust_ext: %s", problem)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        topics = loop.run_until_complete(ensure_topics(settings))
    except TopicMismatch as exc:
        loop.close()
        print(f"segments worker: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    settings = dataclasses.replace(settings, replication_factor=topics.replication_factor)
    build_worker(settings, topics).run(loop)
