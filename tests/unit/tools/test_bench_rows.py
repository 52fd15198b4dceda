"""The freshness-only bench's table: a row per run against the target, and the spread."""

from __future__ import annotations

from streams.tools.bench import TARGETS, freshness_rows


def test_freshness_rows_count_the_runs_within_the_target() -> None:
    target = TARGETS["freshness_p99_ms"][1]
    runs = [{"p50_ms": 10.0, "p99_ms": target - 1}, {"p50_ms": 20.0, "p99_ms": target + 1},
            {"p50_ms": 15.0, "p99_ms": target}]
    rows = freshness_rows({"freshness_runs": {"rate_events_per_s": 20_000.0, "runs": runs}})
    assert len(rows) == 4
    assert rows[1][1] == f"20 / {target + 1:.0f} ms"
    assert rows[-1][1] == f"{target - 1:.0f}-{target + 1:.0f} ms, 2 of 3 within the target"


def test_no_runs_no_spread() -> None:
    assert freshness_rows({"freshness_runs": {"rate_events_per_s": 1.0, "runs": []}}) == []
