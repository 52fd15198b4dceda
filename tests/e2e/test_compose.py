"""docker-compose.yml is valid and wires Kafka, Redis and two workers as documented.

Needs only the docker CLI with its compose plugin (``docker compose config`` reads and
validates the file without a Docker engine); without them the tests are skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def _compose_available() -> str | None:
    """None when `docker compose` can run here, else why not."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        proc = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker compose version` failed: {exc}"
    if proc.returncode != 0:
        return "the docker CLI has no compose plugin (`docker compose version` failed)"
    return None


_why_not = _compose_available()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(_why_not is not None, reason=f"docker compose unavailable: {_why_not}"),
]


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    proc = _compose("config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    parsed: dict[str, Any] = json.loads(proc.stdout)
    return parsed


def test_compose_file_is_valid() -> None:
    proc = _compose("config", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


def test_services_and_images(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {"kafka", "redis", "worker-1", "worker-2"}
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    assert services["redis"]["image"].startswith("redis:7")
    for name in ("kafka", "redis"):
        assert "build" not in services[name]
        assert services[name]["healthcheck"]["test"], name
    assert "kafka-broker-api-versions.sh" in " ".join(services["kafka"]["healthcheck"]["test"])
    for name in ("worker-1", "worker-2"):
        build = services[name]["build"]
        assert Path(build["context"]).resolve() == ROOT
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
        assert (ROOT / "Dockerfile").is_file()


def test_kafka_is_a_single_kraft_node(config: dict[str, Any]) -> None:
    env = config["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_LISTENERS"] == "PLAINTEXT://:9092,CONTROLLER://:9093"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert str(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == "1"
    assert str(env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == "1"
    assert str(env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"]) == "0"


def test_workers_reach_each_other_and_wait_for_dependencies(config: dict[str, Any]) -> None:
    services = config["services"]
    advertised = set()
    for name in ("worker-1", "worker-2"):
        svc = services[name]
        env = svc["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["SEGMENTS_WEB_HOST"] == "0.0.0.0"
        port = int(env.get("SEGMENTS_WEB_PORT", 6066))
        # Each worker advertises a URL its peers can resolve (its service name), not 0.0.0.0.
        assert env["SEGMENTS_ADVERTISED_URL"] == f"http://{name}:{port}"
        advertised.add(env["SEGMENTS_ADVERTISED_URL"])
        for dep in ("kafka", "redis"):
            assert svc["depends_on"][dep]["condition"] == "service_healthy"
        assert [p["target"] for p in svc["ports"]] == [port]
    assert len(advertised) == 2


def test_published_ports_bind_loopback_only(config: dict[str, Any]) -> None:
    published: dict[str, list[str]] = {}
    for name, svc in config["services"].items():
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", (name, port)
            published.setdefault(name, []).append(str(port["published"]))
    assert published == {"worker-1": ["6066"], "worker-2": ["6067"]}
