"""docker-compose.yml is valid and wires Kafka, Redis and two workers as documented.

With the docker CLI and its compose plugin, ``docker compose config`` reads, validates and
normalises the file (no Docker engine needed). Without them (as on the project's own
machines), the same checks run on the file as PyYAML reads it, normalised the same way
(anchors merged, short port syntax expanded), and only the validation by Compose is skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.monitoring import dashboard_metrics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
_VARIABLE = re.compile(r"\$\{(\w+)(?::?[?-][^}]*)?\}")


def _example_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


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
pytestmark = [pytest.mark.e2e]
needs_compose = pytest.mark.skipif(_why_not is not None,
                                   reason=f"docker compose unavailable: {_why_not}")


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "--env-file",
                           str(ENV_EXAMPLE), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def _port(spec: Any) -> dict[str, Any]:
    """A port in Compose's long form, as `docker compose config` prints it."""
    if isinstance(spec, dict):
        return spec
    parts = str(spec).split(":")
    host_ip = parts[0] if len(parts) == 3 else None
    published, target = (parts[-2], parts[-1]) if len(parts) >= 2 else (None, parts[0])
    out: dict[str, Any] = {"target": int(target), "published": published}
    if host_ip is not None:
        out["host_ip"] = host_ip
    return out


def _read_yaml(profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The file as PyYAML reads it (merge keys resolved), normalised like Compose does (the
    services of other profiles left out)."""
    env = _example_env()
    text = _VARIABLE.sub(lambda m: env[m.group(1)], COMPOSE_FILE.read_text())  # as Compose does
    parsed: dict[str, Any] = yaml.safe_load(text)
    parsed["services"] = {name: svc for name, svc in parsed["services"].items()
                          if not svc.get("profiles") or set(svc["profiles"]) & set(profiles)}
    for svc in parsed["services"].values():
        if isinstance(svc.get("build"), str):
            svc["build"] = {"context": str(ROOT / svc["build"]), "dockerfile": "Dockerfile"}
        elif isinstance(svc.get("build"), dict):
            svc["build"]["context"] = str(ROOT / svc["build"].get("context", "."))
        if "ports" in svc:
            svc["ports"] = [_port(p) for p in svc["ports"]]
        if isinstance(svc.get("depends_on"), list):
            svc["depends_on"] = {d: {"condition": "service_started"} for d in svc["depends_on"]}
    return parsed


def _config(*profiles: str) -> dict[str, Any]:
    if _why_not is not None:
        return _read_yaml(profiles)
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    proc = subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "--env-file",
                           str(ENV_EXAMPLE), *flags, "config",
                           "--format", "json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    parsed: dict[str, Any] = json.loads(proc.stdout)
    return parsed


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return _config()


@pytest.fixture(scope="module")
def monitoring() -> dict[str, Any]:
    return _config("monitoring")


@needs_compose
def test_compose_file_is_valid() -> None:
    proc = _compose("config", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


def test_every_image_is_pinned_to_a_release(config: dict[str, Any]) -> None:
    for name, svc in config["services"].items():
        if "build" in svc:
            continue
        image = svc["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+(-[\w.]+)?(@sha256:[0-9a-f]{64})?",
                            image), (
            f"{name}: {image} is not pinned to an exact release")


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
        # the readiness probe: not unready at every rebalance, as /healthz is
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])


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
        password = _example_env()["REDIS_PASSWORD"]
        assert env["REDIS_URL"] == f"redis://:{password}@redis:6379/0"
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


# -- the monitoring profile ----------------------------------------------------------------------
MONITORING = ROOT / "monitoring"


def test_the_monitoring_profile(monitoring: dict[str, Any]) -> None:
    services = monitoring["services"]
    assert {"prometheus", "grafana"} <= set(services)
    for name in ("prometheus", "grafana"):
        svc = services[name]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", svc["image"]), svc["image"]
        assert all(p.get("host_ip") == "127.0.0.1" for p in svc["ports"])
        for volume in svc["volumes"]:
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith((".", "/")) and not source.startswith("./secrets"):  # (made
                # by the user, as the file's header says)
                assert (ROOT / source).resolve().exists(), source
    scrape = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    workers = {n for n, svc in services.items() if "build" in svc}
    assert {t.split(":")[0] for t in targets} == workers
    for provisioning in (MONITORING / "grafana" / "provisioning").rglob("*.yml"):
        assert yaml.safe_load(provisioning.read_text())["apiVersion"] == 1


def test_the_dashboard_names_metrics_a_worker_exposes() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from api.metrics import ApiMetrics
    from streams.runtime.metrics import Holdings, RuntimeMetrics

    runtime = RuntimeMetrics(lambda: Holdings(lag={("in", 0): 0}))
    ApiMetrics(runtime.registry).durations.labels("/segments", "200").observe(0.01)
    exposed = {f.name for f in text_string_to_metric_families(
        generate_latest(runtime.registry).decode())}
    used = dashboard_metrics()
    assert used, "the dashboard queries no metric"
    assert used <= exposed, f"the dashboard names metrics no worker exposes: {used - exposed}"


def test_redis_and_the_workers_are_secured_from_the_env_file(config: dict[str, Any]) -> None:
    example = _example_env()
    assert set(example) == {"REDIS_PASSWORD", "SEGMENTS_CLUSTER_SECRET"}
    raw = COMPOSE_FILE.read_text()
    for name in example:  # required: Compose stops with the message when .env lacks one
        assert "${" + name + ":?" in raw, name
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == example["REDIS_PASSWORD"]
    assert redis["environment"]["REDISCLI_AUTH"] == example["REDIS_PASSWORD"]
    for name in ("worker-1", "worker-2"):
        svc = config["services"][name]
        env = svc["environment"]
        assert env["SEGMENTS_CLUSTER_SECRET"] == example["SEGMENTS_CLUSTER_SECRET"]
        keys_dir = str(Path(env["SEGMENTS_API_KEYS_FILE"]).parent)
        mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}"
                  for v in svc["volumes"]]
        assert any(m.split(":")[1] == keys_dir for m in mounts), mounts  # the folder
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".env" in ignored and "secrets/" in ignored


def test_prometheus_scrapes_with_a_key() -> None:
    scrape = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    auth = scrape["scrape_configs"][0]["authorization"]
    assert auth["type"] == "Bearer"
    assert auth["credentials_file"] == "/etc/prometheus/metrics-key"
