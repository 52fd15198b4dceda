"""`segments migrate --to-app-id NEW --partitions N` (contract §11): a deployment's durable state
copied into a new app id's topics with N partitions, while the source keeps running.

What is copied, and the order that makes it a consistent cut (``run_migration``):

1. the source group's committed offsets, read first: of the input, and of the repartition topic;
2. the repartition topic from those offsets to its end (events whose input records are
   committed but which are not applied yet), each to its family's partition of N;
3. the ``recommendations`` changelog, every partition from its start to its end, each record to
   its family's partition of N (its value names the partition it belongs to: rewritten);
4. the new group's input offsets set to the source's (step 1).

Every input record below a committed offset was applied (its changelog write, read at 3) or
repartitioned (its event, read at 2) before step 1; whatever the source does after step 1 is read
again by the new group from those offsets, and applying an event twice changes nothing (contract
§2, last writer wins): nothing is lost, nothing counts twice.

Not copied: the ``emitted-counts`` changelog. A change's ``version`` is the offset of its record
there (contract §4), which a copy cannot keep; the new deployment, starting with no published
counts, publishes every current count once under versions of its own, into its output topics
(give it its own SEGMENTS_CHANGES_TOPIC and SEGMENTS_COUNTS_TOPIC: README, the procedure).

The planning rules are pure functions, unit tested; ``run_migration`` does the I/O. Never
imported by the worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from streams.codec.durable import (
    decode_recommendation,
    decode_recommendation_key,
    encode_recommendation,
)
from streams.codec.exceptions import MalformedRecord
from streams.codec.keys import family_key
from streams.codec.names import RECOMMENDATIONS, Names
from streams.codec.partitioner import partition_for
from streams.codec.wire import decode_event
from streams.domain.exceptions import InvalidEvent
from streams.runtime.exceptions import TopicMismatch
from streams.runtime.kafka_clients import client_options, start_consumer
from streams.runtime.topics import ensure_topics, wanted_topics
from streams.settings import Settings, SettingsError
from streams.tools.exceptions import MigrationRefused

logger = logging.getLogger(__name__)

MAX_PARTITIONS = 10_000  # SEGMENTS_PARTITIONS' bound


# -- the rules ------------------------------------------------------------------------------------

def target_settings(source: Settings, to_app_id: str, partitions: int) -> Settings:
    """The settings of the deployment to create; raises MigrationRefused for a request that
    cannot work (an app id Kafka refuses or the source's own, a partition count out of range)."""
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise MigrationRefused(f"--partitions {partitions}: must be between 1 and "
                               f"{MAX_PARTITIONS}")
    if not to_app_id.strip():
        raise MigrationRefused("--to-app-id is empty")
    try:  # the rule SEGMENTS_APP_ID follows
        app_id = Settings.from_env({"SEGMENTS_APP_ID": to_app_id}).app_id
    except SettingsError as exc:
        raise MigrationRefused(f"--to-app-id: {exc}") from None
    if app_id == source.app_id:
        raise MigrationRefused(f"--to-app-id {app_id} is the source's own app id "
                               "(SEGMENTS_APP_ID): name a new one")
    return dataclasses.replace(source, app_id=app_id, partitions=partitions)


def target_topics(target: Names) -> list[str]:
    """The new app id's own topics (the repartition topic and the changelogs); the input and
    output topics are the settings', shared or not."""
    return [t.name for t in wanted_topics(target) if t.fixed_partitions]


def target_refusal(records: Mapping[str, int], committed: int) -> str | None:
    """Why the target cannot be written: any of its topics holding records (``records``: per
    existing target topic, the records up to its end) or its group having committed offsets;
    None when it can."""
    full = sorted(t for t, n in records.items() if n)
    if full:
        return (f"the target's topics already hold data: {', '.join(full)}; migrate only into "
                "a new app id (or delete those topics first)")
    if committed:
        return (f"the target's consumer group has committed offsets of {committed} partitions: "
                "its app id was used before; name a new one")
    return None


@functools.lru_cache(maxsize=100_000)
def family_partition(family: tuple[str, str, str, str], partitions: int) -> int:
    """The partition of ``partitions`` a segment family's records go to (memoised: a family
    has many records)."""
    return partition_for(family_key(family), partitions)


def rekey_recommendation(key: bytes, value: bytes | None, partition: int, partitions: int
                         ) -> tuple[int, bytes | None]:
    """A ``recommendations`` changelog record of source partition ``partition``: the partition
    of ``partitions`` it belongs to and its value there (the value names its partition).
    Raises MalformedRecord for a record this product does not write."""
    if value is None:  # a tombstone: a forgotten withdrawal
        k = decode_recommendation_key(key)
        return family_partition(k.family, partitions), None
    k, v = decode_recommendation(key, value, partition)
    target = family_partition(k.family, partitions)
    return target, encode_recommendation(v.weight, v.in_history, v.ts, v.offset, target, v.name)


def rekey_repartitioned(value: bytes | None, partitions: int) -> tuple[int, bytes]:
    """A repartition topic record: its family's partition of ``partitions`` and its key.
    Raises InvalidEvent for a record no ingest wrote (the source dead-letters those)."""
    ev, _, _ = decode_event(value or b"")
    key = family_key(ev.family)
    return partition_for(key, partitions), key


def copy_starts(committed: Mapping[TopicPartition, int], topic: str, partitions: list[int]
                ) -> dict[TopicPartition, int | None]:
    """Where to copy ``topic`` from: the committed offset, None (the start) where the source
    committed nothing."""
    return {(tp := TopicPartition(topic, p)): committed.get(tp) for p in partitions}


def input_offsets(committed: Mapping[TopicPartition, int], input_topic: str
                  ) -> dict[TopicPartition, int]:
    """The new group's offsets: the source's committed input offsets (partitions without one
    are read from the start, as the source would)."""
    return {tp: offset for tp, offset in committed.items() if tp.topic == input_topic}


# -- the broker ------------------------------------------------------------------------------------

@dataclass
class MigrationReport:
    source: str
    target: str
    partitions: int
    recommendations: int = 0  # changelog records copied (tombstones included)
    repartitioned: int = 0  # events not applied yet, copied
    skipped: int = 0  # records this product does not write
    input_offsets: dict[int, int] = field(default_factory=dict)  # the new group's
    seconds: float = 0.0

    def summary(self) -> str:
        behind = ", ".join(f"{p}:{o}" for p, o in sorted(self.input_offsets.items()))
        return (f"migrated {self.source} -> {self.target} ({self.partitions} partitions) in "
                f"{self.seconds:.1f}s: {self.recommendations} recommendations changelog records, "
                f"{self.repartitioned} events not yet applied, {self.skipped} records skipped "
                f"(not this product's); the new group reads the input from "
                f"{behind or 'its start'}")


async def _committed(admin: AIOKafkaAdminClient, group: str, timeout_s: float = 30.0
                     ) -> dict[TopicPartition, int]:
    """``group``'s committed offsets (retried while its coordinator is not available, e.g. on a
    cluster where no group committed anything yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            offsets = await admin.list_consumer_group_offsets(group)
            return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _partitions(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """Partition counts of those of ``topics`` that exist (only those are described: a broker
    that creates topics on demand creates those it is asked about)."""
    existing = set(await admin.list_topics())
    topics = [t for t in topics if t in existing]
    if not topics:
        return {}
    described = await admin.describe_topics(topics)
    return {d["topic"]: len(d["partitions"]) for d in described
            if d["error_code"] == 0 and d["partitions"]}


async def _writable(consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient, topics: list[str],
                    timeout_s: float = 30.0) -> None:
    """Until every partition of ``topics`` (just created) answers at its leader: writes before
    that are refused and retried, noisily."""
    sizes = await _partitions(admin, topics)
    tps = [TopicPartition(t, p) for t, n in sizes.items() for p in range(n)]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await consumer.end_offsets(tps)
            return
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _copy(consumer: AIOKafkaConsumer, producer: AIOKafkaProducer,
                starts: dict[TopicPartition, int | None], target_topic: str,
                rekey: Any, report: MigrationReport) -> int:
    """Every record of ``starts``' partitions from there to the end they have now, through
    ``rekey(record) -> (partition, key, value)`` (raising MalformedRecord or InvalidEvent to
    skip a record), produced in order to ``target_topic``; returns how many were copied."""
    tps = list(starts)
    if not tps:
        return 0
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    for tp, start in starts.items():
        if start is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, start)
    left = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
    copied = 0
    # Whole batches per target partition: a tenth of the cost of one send() per record. One
    # producer sends a partition's batches in order (idempotent), so a key's last record stays
    # last.
    batches: dict[int, Any] = {}
    pending: list[asyncio.Future[Any]] = []

    async def send(partition: int) -> None:
        pending.append(await producer.send_batch(batches.pop(partition), target_topic,
                                                 partition=partition))

    while left:
        fetched = await consumer.getmany(*left, timeout_ms=1000, max_records=10_000)
        for tp, records in fetched.items():
            for r in records:
                if r.offset >= ends[tp]:
                    left.discard(tp)
                    break
                try:
                    partition, key, value = rekey(r)
                except (MalformedRecord, InvalidEvent) as exc:
                    report.skipped += 1
                    if report.skipped <= 10:
                        logger.warning("skipped %s[%d]@%d: %s", tp.topic, tp.partition,
                                       r.offset, exc)
                    continue
                timestamp = r.timestamp if r.timestamp >= 0 else None
                headers = list(r.headers or ())
                for _ in range(2):
                    batch = batches.get(partition)
                    if batch is None:
                        batch = batches[partition] = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=timestamp,
                                    headers=headers) is not None:
                        break
                    await send(partition)  # full: it goes, the record opens the next one
                else:
                    raise RuntimeError(f"a record of {tp.topic}[{tp.partition}]@{r.offset} "
                                       "does not fit an empty batch")
                copied += 1
        for tp in list(left):  # (a compacted tail holds no record up to the end)
            if await consumer.position(tp) >= ends[tp]:
                left.discard(tp)
        if len(pending) >= 256:
            await asyncio.gather(*pending)
            pending.clear()
    for partition in list(batches):
        await send(partition)
    await asyncio.gather(*pending)  # acknowledged by the broker (acks=all), or raises
    return copied


async def run_migration(source: Settings, to_app_id: str, partitions: int) -> MigrationReport:
    """Copy ``source``'s durable state into app id ``to_app_id`` with ``partitions`` partitions
    (the module docstring says what and in which order). Raises MigrationRefused when the
    request or the target cannot work, before writing anything."""
    started = time.monotonic()
    target = target_settings(source, to_app_id, partitions)
    old, new = source.names, target.names
    kafka = {"bootstrap_servers": source.bootstrap_servers,
             **client_options(source.kafka_security)}
    report = MigrationReport(source.app_id, target.app_id, partitions)
    admin = AIOKafkaAdminClient(**kafka)
    consumer = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 << 20, **kafka)
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, linger_ms=20,
                                max_batch_size=512 * 1024, **kafka)
    await admin.start()
    try:
        await start_consumer(consumer)
        changelog = old.changelog_topic(RECOMMENDATIONS)
        sizes = await _partitions(admin, [changelog, old.repartition_topic,
                                          *target_topics(new)])
        if changelog not in sizes:
            raise MigrationRefused(f"no deployment to copy: topic {changelog} does not exist "
                                   f"(SEGMENTS_APP_ID={source.app_id} is the source)")
        present = [t for t in target_topics(new) if t in sizes]
        ends = await consumer.end_offsets([TopicPartition(t, p) for t in present
                                           for p in range(sizes[t])]) if present else {}
        held = {t: sum(n for tp, n in ends.items() if tp.topic == t) for t in present}
        refused = target_refusal(held, len(await _committed(admin, target.app_id)))
        if refused:
            raise MigrationRefused(refused)
        try:
            await ensure_topics(target)
        except TopicMismatch as exc:
            raise MigrationRefused(str(exc)) from None
        await _writable(consumer, admin, target_topics(new))

        # 1. The cut: the source's committed offsets, before anything is read.
        committed = await _committed(admin, source.app_id)
        await producer.start()
        # 2. Events repartitioned but not applied yet.
        if old.repartition_topic in sizes:
            starts = copy_starts(committed, old.repartition_topic,
                                 list(range(sizes[old.repartition_topic])))

            def repartitioned(r: Any) -> tuple[int, bytes, bytes]:
                partition, key = rekey_repartitioned(r.value, partitions)
                return partition, key, r.value

            report.repartitioned = await _copy(consumer, producer, starts, new.repartition_topic,
                                               repartitioned, report)
        # 3. The durable state, from each partition's start to its end now.

        def recommendation(r: Any) -> tuple[int, bytes, bytes | None]:
            partition, value = rekey_recommendation(r.key, r.value, r.partition, partitions)
            return partition, r.key, value

        report.recommendations = await _copy(
            consumer, producer, copy_starts({}, changelog, list(range(sizes[changelog]))),
            new.changelog_topic(RECOMMENDATIONS), recommendation, report)
        await producer.flush()
        # 4. The new group follows the input from where the source's had committed.
        offsets = input_offsets(committed, source.input_topic)
        if offsets:
            await _commit(kafka, target.app_id, offsets)
        report.input_offsets = {tp.partition: o for tp, o in offsets.items()}
    finally:
        await producer.stop()
        await consumer.stop()
        await admin.close()
    report.seconds = time.monotonic() - started
    return report


async def _commit(kafka: dict[str, Any], group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group``, which has no member (a consumer with assigned
    partitions commits outside any generation)."""
    consumer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **kafka)
    await start_consumer(consumer)
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()
