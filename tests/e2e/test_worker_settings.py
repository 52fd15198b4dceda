"""`segments worker` with settings that cannot work: it exits at once with a message naming the
setting, instead of starting and failing every request (contract section 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SEGMENTS = Path(sys.executable).parent / "segments"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.mark.parametrize(("env", "message"), [
    ({"SEGMENTS_CACHE_TTL_S": "inf"}, "SEGMENTS_CACHE_TTL_S='inf' must be a finite number"),
    ({"SEGMENTS_WEB_HOST": "0.0.0.0"}, "set SEGMENTS_ADVERTISED_URL"),
    ({"SEGMENTS_APP_ID": "two words"}, "SEGMENTS_APP_ID='two words' is not usable"),
])
def test_a_worker_with_unusable_settings_exits_with_a_clear_message(
        env: dict[str, str], message: str) -> None:
    proc = subprocess.run([str(SEGMENTS), "worker"], capture_output=True, text=True,
                          timeout=30, check=False,
                          env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", **env})
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
