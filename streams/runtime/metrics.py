"""A worker's Prometheus metrics (contract section 9), in a registry of its own.

Counters are incremented by the runtime as work is done, per batch rather than per event; the
gauges (lag, what the worker holds, partitions) are computed when ``/metrics`` is scraped.
Labels have bounded cardinality only: outcomes, topics and partition numbers, roles; never a
program id or a reason as free text. The HTTP API adds its own metrics to the same registry.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Event freshness buckets, seconds.
FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class BulkHistogram(Collector):
    """A histogram fed many values at once. prometheus-client's ``Histogram.observe`` costs a
    few microseconds a value (a lock, a bisect in Python): per event, a tenth of a worker's
    time; this one counts a batch's values in one loop and is exposed the same way."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = list(buckets)
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe_many(self, values: Iterable[float]) -> None:
        counts = self.counts
        bounds = self.bounds
        total = 0.0
        for v in values:
            counts[bisect.bisect_left(bounds, v)] += 1
            total += v
        self.sum += total

    def collect(self) -> Iterator[Metric]:
        cumulative = []
        running = 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative,
                                    sum_value=self.sum)


@dataclass
class Holdings:
    """What a worker holds on its active partitions, computed at scrape."""

    recommendations: int = 0
    segments: int = 0
    programs: int = 0
    active_partitions: int = 0
    standby_partitions: int = 0
    lag: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> lag
    watermarks: dict[int, int] = field(default_factory=dict)  # active partition -> epoch ms


class _Gauges(Collector):
    def __init__(self, holdings: Callable[[], Holdings]) -> None:
        self.holdings = holdings

    def collect(self) -> Iterator[Metric]:
        h = self.holdings()
        lag = GaugeMetricFamily(
            "segments_consumer_lag_records",
            "Records of the input and repartition partitions this worker owns not yet handled",
            labels=["topic", "partition"])
        for (topic, partition), value in sorted(h.lag.items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag
        yield GaugeMetricFamily("segments_recommendations",
                                "Recommendations held on this worker's active partitions",
                                value=h.recommendations)
        yield GaugeMetricFamily("segments_segments",
                                "Segment families on this worker's active partitions",
                                value=h.segments)
        yield GaugeMetricFamily("segments_programs",
                                "Programs with segments on this worker's active partitions",
                                value=h.programs)
        assigned = GaugeMetricFamily("segments_partitions_assigned",
                                     "Partitions this worker holds, by role", labels=["role"])
        assigned.add_metric(["active"], h.active_partitions)
        assigned.add_metric(["standby"], h.standby_partitions)
        yield assigned
        watermark = GaugeMetricFamily(
            "segments_watermark_ms",
            "Per active partition: the greatest event ts applied minus SEGMENTS_GRACE_MS "
            "(epoch ms); older withdrawals are forgotten, older events without state are late",
            labels=["partition"])
        for partition, value in sorted(h.watermarks.items()):
            watermark.add_metric([str(partition)], value)
        yield watermark


class RuntimeMetrics:
    def __init__(self, holdings: Callable[[], Holdings] | None = None) -> None:
        self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        events = Counter("segments_events", "Input events handled, by outcome (ignored: not "
                         "newer than the stored state, or a duplicate)", ["outcome"],
                         registry=self.registry)
        self.applied = events.labels("applied")
        self.ignored = events.labels("ignored")
        self.invalid = events.labels("invalid")
        self.late = Counter("segments_late_events",
                            "Events older than their partition's watermark for a recommendation "
                            "without state: dead letters (reason late), not applied",
                            registry=self.registry)
        self.forgotten = Counter("segments_forgotten_withdrawals",
                                 "Withdrawals older than the watermark forgotten (memory freed, "
                                 "changelog tombstoned)", registry=self.registry)
        self.freshness = BulkHistogram(
            "segments_event_freshness_seconds",
            "From an applied event's Kafka timestamp to its being applied", FRESHNESS_BUCKETS)
        self.registry.register(self.freshness)
        self.change_events = Counter("segments_change_events",
                                     "Count-change events published", registry=self.registry)
        self.rebalances = Counter("segments_rebalances", "Rebalances this worker went through",
                                  registry=self.registry)
        self.rebuilds = Counter(
            "segments_rebuilds", "Background rebuilds of partitions from their changelogs, by "
            "event (started; continued: went on through a rebalance instead of starting over; "
            "finished: in service; cancelled: revoked)", ["event"], registry=self.registry)
        self.rebuild_records = Counter("segments_rebuild_records",
                                       "Changelog records read by background rebuilds",
                                       registry=self.registry)
        self.failed_batches = Counter("segments_failed_batches",
                                      "Batches whose writes failed (their records read again)",
                                      registry=self.registry)
        self.malformed_records = Counter("segments_malformed_changelog_records",
                                         "Changelog records skipped on recovery",
                                         registry=self.registry)
        self.topic_warnings = Gauge(
            "segments_topic_config_warnings",
            "Existing topics with weaker settings than the worker creates (1 per topic and "
            "setting: replication.factor, min.insync.replicas, cleanup.policy), found at start",
            ["topic", "setting"], registry=self.registry)
        if holdings is not None:
            self.registry.register(_Gauges(holdings))

    def topic_config_warnings(self, warnings: Iterable[tuple[str, str]]) -> None:
        """The (topic, setting) pairs the check at start warned about."""
        for topic, setting in warnings:
            self.topic_warnings.labels(topic, setting).set(1)

    def handled(self, applied: int, ignored: int, invalid: int,
                applied_timestamps_ms: list[int], late: int = 0, forgotten: int = 0) -> None:
        """A batch's records of one partition were handled."""
        if late:
            self.late.inc(late)
        if forgotten:
            self.forgotten.inc(forgotten)
        if applied:
            self.applied.inc(applied)
        if ignored:
            self.ignored.inc(ignored)
        if invalid:
            self.invalid.inc(invalid)
        if applied_timestamps_ms:
            now_ms = time.time() * 1000.0
            self.freshness.observe_many((now_ms - ts) / 1000.0 for ts in applied_timestamps_ms)
