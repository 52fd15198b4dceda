"""A tiny `segments bench --quick` so the benchmark cannot rot (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# CPU-bound (the bench ingests at full speed), no window but its 420 s: the nice-10 pass.
pytestmark = [pytest.mark.e2e, pytest.mark.untimed]


def test_bench_quick_runs_and_writes_results(kafka_bootstrap: str, tmp_path: Path) -> None:
    segments = str(Path(sys.executable).parent / "segments")
    # On the session broker: the bench's names are its own (a fresh app id per run).
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nprose stays\n")
    proc = subprocess.run([segments, "bench", "--quick", "--out", str(tmp_path / "out"),
                           "--doc", str(doc)], env=env, capture_output=True, text=True,
                          timeout=420, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    for key in ("raw_events_per_s", "ingest_events_per_s", "ingest_over_raw", "freshness", "api",
                "memory", "recovery", "standby", "long_tail", "pushdown"):
        assert key in results
    assert results["raw_events_per_s"] > 0 and results["ingest_events_per_s"] > 0
    assert results["api"]["cached"]["requests"] > 0
    assert results["standby"]["rss_bytes_with"] > 0
    assert results["pushdown"]["sixteen_misses"]["computations_per_worker"][0] >= 1
    text = doc.read_text()
    assert "prose stays" in text and "ingest / raw" in text
    assert "segments bench" in proc.stdout


def test_bench_freshness_only_runs_phase_three_several_times(kafka_bootstrap: str,
                                                            tmp_path: Path) -> None:
    segments = str(Path(sys.executable).parent / "segments")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nprose stays\n")
    proc = subprocess.run([segments, "bench", "--quick", "--freshness-only", "--freshness-runs",
                           "2", "--out", str(tmp_path / "out"), "--doc", str(doc)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "out" / "results-freshness.json").read_text())
    runs = results["freshness_runs"]["runs"]
    assert [run["probes"] for run in runs] == [10, 10]  # (--quick: 10 probes a run)
    assert all(0 < run["p50_ms"] <= run["p99_ms"] for run in runs)
    text = doc.read_text()
    assert "prose stays" in text and "<!-- bench-freshness:start -->" in text
    assert "runs in a row" in text
