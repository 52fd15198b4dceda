"""Diagnostics for a failed exact check: every record of a deployment's topics, dumped to files
(one JSON line per record), to tell afterwards whether a recommendation was never written to
its changelog, tombstoned, or overwritten by an older value."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.runtime.kafka_clients import start_consumer
from streams.tools.probes import topic_partitions


def _text(b: bytes | None) -> str | None:
    return None if b is None else b.decode("utf-8", errors="replace")


async def dump_topics(bootstrap: str, topics: list[str], out_dir: Path,
                      timeout_s: float = 60.0, **kafka: Any) -> str:
    """Every record of ``topics`` (up to their end offsets now) into ``out_dir/<topic>.jsonl``;
    returns a one-line summary (or why it failed: this runs on a failure path)."""
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a failure path)
    lines = []
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", **kafka)
    try:
        await admin.start()
        await start_consumer(consumer)
        for topic in topics:
            tps = [TopicPartition(topic, p) for p in await topic_partitions(admin, topic)]
            if not tps:
                lines.append(f"{topic}: no partitions")
                continue
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            n = 0
            deadline = time.monotonic() + timeout_s
            with (out_dir / f"{topic}.jsonl").open("w") as f:
                while time.monotonic() < deadline:
                    positions = {tp: await consumer.position(tp) for tp in tps}
                    if all(positions[tp] >= ends[tp] for tp in tps):
                        break
                    batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
                    for tp, msgs in batch.items():
                        for m in msgs:
                            if m.offset >= ends[tp]:
                                continue
                            n += 1
                            f.write(json.dumps({
                                "p": tp.partition, "o": m.offset, "ts": m.timestamp,
                                "k": _text(m.key), "v": _text(m.value),
                                "h": [[k, _text(v)] for k, v in (m.headers or ())]}) + "\n")
            lines.append(f"{topic}: {n} records, starts "
                         f"{ {tp.partition: starts[tp] for tp in tps} } ends "
                         f"{ {tp.partition: ends[tp] for tp in tps} }")
    except Exception as exc:  # a diagnostic: never hide the failure it explains
        lines.append(f"dump failed: {exc!r}")
    finally:
        await consumer.stop()
        await admin.close()
    summary = "; ".join(lines)
    (out_dir / "summary.txt").write_text(summary + "\n")
    return f"topics dumped to {out_dir}: {summary}"


def deployment_topics(app_id: str) -> list[str]:
    """The topics of a test deployment (tests/support/harness.py's Cluster)."""
    return [f"{app_id}-in", f"{app_id}-recommendations-by-segment",
            f"{app_id}-recommendations-changelog", f"{app_id}-emitted-counts-changelog"]
