"""`segments demo` as a newcomer runs it (its own broker and data folder, no serving)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.tools.kafka_local import free_port, port_free

pytestmark = pytest.mark.e2e


def test_demo_starts_everything_prints_segments_and_stops(tmp_path: Path) -> None:
    segments = str(Path(sys.executable).parent / "segments")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SEGMENTS_") and k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    kafka_port, web_port = free_port(), free_port()
    proc = subprocess.run([segments, "demo", "--no-serve", "--port", str(kafka_port),
                           "--web-port", str(web_port), "--events", "5000"],
                          env=env, capture_output=True, text=True, timeout=400, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert f"Kafka started at 127.0.0.1:{kafka_port}" in out
    assert "Top growth segments by label" in out and "segments in all" in out
    assert "Kafka stopped" in out
    assert port_free(kafka_port) and port_free(web_port)
