"""The Faust application: topics, the durable tables, the ingest and aggregate agents and the
change publisher, assembled by ``create_app``.

Data flow (DESIGN.md): input -> ingest (validate; invalid -> DLQ) -> repartition by segment
family -> aggregate (last-writer-wins durable table + derived per-partition indexes) -> timer
publishes coalesced count changes. The derived state is rebuilt from the durable tables each
time partitions are assigned and recovered, and dropped when they are revoked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import faust
import orjson
from faust.types import TP

from streams.events import Event, parse_event
from streams.exceptions import InvalidEvent
from streams.segments import (
    CountChange,
    FamilyKey,
    PartitionState,
    SegmentStat,
    decode_record,
    encode_record,
    record_key,
)
from streams.settings import Settings

logger = logging.getLogger(__name__)


class _NotifyingTable(faust.Table[bytes, bytes]):
    """A table that tells the application when recovery ends and partitions move."""

    owner: SegmentStreamApp | None = None

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        if self.owner is not None:
            self.owner.on_recovered({tp.partition for tp in active_tps})

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP],
                           newly_assigned: set[TP], generation_id: int = 0) -> None:
        if self.owner is not None:
            self.owner.on_rebalance_started()
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)


class SegmentStreamApp:
    """One worker's Faust app and the derived state it serves."""

    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        self.partitions: dict[int, PartitionState] = {}
        self.ready = False
        self.processed = 0
        self.invalid = 0
        self.app = faust.App(
            s.app_id,
            broker=s.kafka_url,
            store="memory://",
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            table_standby_replicas=s.standby_replicas,
            web_enabled=False,
            canonical_url=s.advertised_url,
            datadir=s.data_dir or None,
            broker_session_timeout=10.0,
            broker_heartbeat_interval=1.0,
            broker_rebalance_timeout=20.0,
            broker_commit_every=1000,
            broker_commit_interval=1.0,
            producer_linger=0.005,
            producer_acks=-1,
            stream_buffer_maxsize=8192,
            consumer_auto_offset_reset="earliest",
            table_cleanup_interval=3600.0,
            logging_config=None,
        )
        app = self.app
        self.input_topic = app.topic(s.input_topic, key_type=bytes, value_type=bytes,
                                     key_serializer="raw", value_serializer="raw",
                                     partitions=s.partitions)
        self.dlq_topic = app.topic(s.dlq_topic, key_serializer="raw", value_serializer="raw",
                                   partitions=s.partitions)
        self.by_segment = app.topic(s.repartition_topic, key_serializer="raw",
                                    value_serializer="raw", partitions=s.partitions,
                                    internal=True)
        self.changes_topic = app.topic(s.changes_topic, key_serializer="raw",
                                       value_serializer="raw", partitions=s.partitions)
        # bytes keys and values: the table's serializer is then "raw" (orjson is ours).
        self.recommendations = _NotifyingTable(
            app, name="recommendations", key_type=bytes, value_type=bytes,
            partitions=s.partitions, recovery_buffer_size=10_000)
        self.emitted: faust.Table[bytes, bytes] = faust.Table(
            app, name="emitted-counts", key_type=bytes, value_type=bytes,
            partitions=s.partitions, recovery_buffer_size=10_000)
        app.tables.add(self.recommendations)
        app.tables.add(self.emitted)
        self.recommendations.owner = self
        app.agent(self.input_topic, name="ingest")(self._ingest)
        app.agent(self.by_segment, name="aggregate")(self._aggregate)
        app.timer(s.change_interval_ms / 1000.0, name="publish-changes")(self._publish_changes)

    # -- agents ----------------------------------------------------------------------------
    async def _ingest(self, stream: Any) -> AsyncIterator[None]:
        async for event in stream.events():
            msg = event.message
            try:
                ev = parse_event(msg.value, round(msg.timestamp * 1000))
            except InvalidEvent as exc:
                self.invalid += 1
                await self.dlq_topic.send(key=msg.key, value=msg.value,
                                          headers=[("error", exc.reason.encode())])
                continue
            await self.by_segment.send(key=ev.family_key, value=ev.encode())
            yield None

    async def _aggregate(self, stream: Any) -> AsyncIterator[None]:
        async for event in stream.events():
            msg = event.message
            try:
                ev = Event.decode(msg.value)
            except (ValueError, TypeError) as exc:  # not written by our ingest agent
                await self.dlq_topic.send(key=msg.key, value=msg.value,
                                          headers=[("error", f"bad repartition record: {exc}"
                                                    .encode())])
                continue
            state = self.partitions.get(msg.partition)
            if state is None:
                state = self.partitions[msg.partition] = PartitionState(msg.partition)
            rec = state.apply(ev, msg.offset)
            if rec is not None:
                family: FamilyKey = (ev.program_id, ev.segment_basis, ev.basis_id, ev.action_type)
                self.recommendations[record_key(family, ev.user_id)] = encode_record(
                    rec, msg.partition, ev.name)
            self.processed += 1
            yield None

    # -- change publisher ------------------------------------------------------------------
    async def _publish_changes(self) -> None:
        if self.app.rebalancing or not self.ready:
            return
        thresholds = self.settings.watch_thresholds
        for partition, state in list(self.partitions.items()):
            changes = state.take_changes(thresholds)
            if not changes:
                continue
            now_ms = int(time.time() * 1000)
            try:
                futures = [await self.changes_topic.send(
                    key=c.program_id.encode(), value=change_payload(c, now_ms))
                    for c in changes]
                await asyncio.gather(*futures)
            except Exception:
                logger.exception("publishing %d count changes failed; retrying", len(changes))
                state.dirty.update((c.program_id, c.segment_basis, c.segment_basis_id,
                                    c.action_type) for c in changes)
                return
            for c in changes:
                state.commit_change(c)
                self.emitted.send_changelog(partition, c.emitted_key,
                                            orjson.dumps([c.user_count, partition]))
                self.emitted.data[c.emitted_key] = orjson.dumps([c.user_count, partition])

    # -- rebalance / recovery --------------------------------------------------------------
    def on_rebalance_started(self) -> None:
        self.ready = False

    def on_recovered(self, active: set[int]) -> None:
        """Drop revoked partitions; rebuild newly assigned ones from the durable tables."""
        for p in list(self.partitions):
            if p not in active:
                del self.partitions[p]
        missing = active - set(self.partitions)
        if missing:
            started = time.monotonic()
            fresh = {p: PartitionState(p) for p in missing}
            n = 0
            for key, raw in self.recommendations.data.items():
                rec, partition, name = decode_record(raw)
                state = fresh.get(partition)
                if state is not None:
                    *family, user = orjson.loads(key)
                    state.load(tuple(family), user, rec, name)
                    n += 1
            for key, raw in self.emitted.data.items():
                count, partition = orjson.loads(raw)
                state = fresh.get(partition)
                if state is not None:
                    state.load_emitted(key, count)
            for state in fresh.values():
                state.mark_unsettled(self.settings.watch_thresholds)
            self.partitions.update(fresh)
            logger.info("rebuilt %d partitions (%d recommendations) in %.2fs",
                        len(fresh), n, time.monotonic() - started)
        self.ready = True

    # -- queries ---------------------------------------------------------------------------
    def local_query(self, program_id: str, segment_type: str, segment_basis: str,
                    min_weight: float) -> tuple[list[SegmentStat], list[int]]:
        """Segments of one program on this worker's active partitions, and those partitions."""
        out: list[SegmentStat] = []
        for state in self.partitions.values():
            out.extend(state.query(program_id, segment_type, segment_basis, min_weight))
        return out, sorted(self.partitions)

    def owners(self) -> dict[str, list[int]]:
        """Worker URL -> active partitions, from the group assignment."""
        topic = self.recommendations.changelog_topic.get_topic_name()
        meta = self.app.assignor.table_metadata(topic)
        return {str(url): sorted(tps.get(topic, [])) for url, tps in meta.items()}


def change_payload(c: CountChange, now_ms: int) -> bytes:
    return orjson.dumps({
        "program_id": c.program_id, "segment_type": c.segment_type,
        "segment_basis": c.segment_basis, "segment_basis_id": c.segment_basis_id,
        "action_type": c.action_type, "name": c.name, "min_weight": c.min_weight,
        "user_count": c.user_count, "previous_user_count": c.previous_user_count,
        "strength": c.strength, "ts": now_ms,
    })
