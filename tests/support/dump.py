"""Diagnostics for a failed exact check: every record of a deployment's topics, dumped to files
(one JSON line per record), to tell afterwards whether a recommendation was never written to
its changelog, tombstoned, or overwritten by an older value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _text(b: bytes | None) -> str | None:
    return None if b is None else b.decode("utf-8", errors="replace")


async def dump_topics(bootstrap: str, topics: list[str], out_dir: Path,
                      timeout_s: float = 60.0, **kafka: Any) -> str:
    """Every record of ``topics`` (up to their end offsets now) into ``out_dir/<topic>.jsonl``;
    returns a one-line summary (or why it failed: this runs on a failure path)."""
    from tests.support.harness import read_topic_complete

    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a failure path)
    lines = []
    try:
        for topic in topics:
            records = await read_topic_complete(bootstrap, topic, timeout_s, **kafka)
            with (out_dir / f"{topic}.jsonl").open("w") as f:
                for m in records:
                    f.write(json.dumps({
                        "p": m.partition, "o": m.offset, "ts": m.timestamp,
                        "k": _text(m.key), "v": _text(m.value),
                        "h": [[k, _text(v)] for k, v in (m.headers or ())]}) + "\n")
            lines.append(f"{topic}: {len(records)} records")
    except Exception as exc:  # a diagnostic: never hide the failure it explains
        lines.append(f"dump failed: {exc!r}")
    summary = "; ".join(lines)
    (out_dir / "summary.txt").write_text(summary + "\n")
    return f"topics dumped to {out_dir}: {summary}"


def deployment_topics(app_id: str) -> list[str]:
    """The topics of a test deployment (tests/support/harness.py's Cluster), its change and
    count topics included: what a failed exactness check of change events needs."""
    return [f"{app_id}-in", f"{app_id}-recommendations-by-segment",
            f"{app_id}-recommendations-changelog", f"{app_id}-emitted-counts-changelog",
            f"{app_id}-changes", f"{app_id}-counts"]
