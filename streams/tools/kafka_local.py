"""A local single-node Apache Kafka broker (KRaft mode) on 127.0.0.1.

The broker's jars are resolved from Maven Central with the machine's ``mvn`` (the pom in
``streams/tools/kafka/pom.xml``) and cached under ``~/.cache/segment-stream/kafka-<version>``.
Each data folder holds one broker: its ``server.properties``, KRaft storage, log file and a
``broker.json`` state file with the pid and ports, so ``stop`` stops only what ``start`` started.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from streams.tools.exceptions import LocalServiceError

logger = logging.getLogger(__name__)

# Kafka 4.1.1: a current release line, KRaft-only (no ZooKeeper), verified end to end with
# aiokafka 0.14 and faust-streaming 0.15.3 (produce, consume, consumer groups, compacted
# changelogs, faust tables and repartitioning).
KAFKA_VERSION = "4.1.1"
JAVA_OPTS = ["-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true"]
STATE_FILE = "broker.json"
LOG_FILE = "kafka.log"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("SEGMENTS_CACHE_DIR") or Path(base) / "segment-stream")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "segment-stream" / "kafka"


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_root() / f"kafka-{version}" / "libs"


def resolve_jars(version: str = KAFKA_VERSION, quiet: bool = True) -> Path:
    """Resolve the broker's runtime jars with Maven once; later calls use the cache."""
    target = libs_dir(version)
    marker = target / ".complete"
    if marker.exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalServiceError("Maven ('mvn') is not on PATH; it is needed once to fetch Kafka")
    pom_text = resources.files("streams.tools").joinpath("kafka/pom.xml").read_text()
    pom_text = pom_text.replace("@KAFKA_VERSION@", version)
    staging = target.parent / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(pom_text)
        cmd = [mvn, "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
        if quiet:
            cmd.insert(1, "-q")
        logger.info("resolving Apache Kafka %s from Maven Central", version)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise LocalServiceError(f"mvn could not resolve Kafka {version}:\n"
                                    f"{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    marker.write_text(version + "\n")
    return target


def _classpath(version: str) -> str:
    return str(resolve_jars(version)) + "/*"


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise LocalServiceError("Java 17+ ('java') is not on PATH; the local Kafka broker needs it")
    return java


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@dataclass(frozen=True)
class BrokerState:
    pid: int
    port: int
    controller_port: int
    version: str

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def read_state(data_dir: Path) -> BrokerState | None:
    path = data_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        return BrokerState(int(raw["pid"]), int(raw["port"]), int(raw["controller_port"]),
                           str(raw["version"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_broker(data_dir: Path) -> BrokerState | None:
    state = read_state(data_dir)
    if state is not None and pid_alive(state.pid) and _is_our_broker(state.pid, data_dir):
        return state
    return None


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid file
    return str(data_dir / "server.properties").encode() in cmdline


def _server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data_dir / 'data'}",
        "num.partitions=8",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=10",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        # A local broker: members join at once instead of waiting 3 s for more.
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        # A local broker keeps what it is given: time-based retention would delete replayed or
        # synthetic events whose record timestamps lie in the past as soon as it checks.
        "log.retention.ms=-1",
        "",
    ])


def _format_storage(java: str, cp: str, data_dir: Path, props: Path) -> None:
    if (data_dir / "data" / "meta.properties").exists():
        return
    cluster_id = _cluster_id()
    proc = subprocess.run(
        [java, *JAVA_OPTS, "-cp", cp, _log4j_flag(), "kafka.tools.StorageTool", "format",
         "-t", cluster_id, "-c", str(props), "--ignore-formatted"],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LocalServiceError(f"formatting Kafka storage failed:\n{proc.stdout}{proc.stderr}")


def _cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64, as `kafka-storage random-uuid` makes.

    Like Kafka's own Uuid.randomUuid, never one that starts with "-": the storage tool's
    argument parser would read it as an option ("--cluster-id: expected one argument"),
    which failed one format in 32.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _log4j_flag() -> str:
    conf = resources.files("streams.tools").joinpath("kafka/log4j2.properties")
    return f"-Dlog4j2.configurationFile={conf}"


def wait_until_ready(bootstrap: str, timeout_s: float, pid: int | None = None) -> None:
    """Block until the broker answers a metadata request (or fail with a clear error)."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await client.start()
            await client.describe_cluster()
            return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    deadline = time.monotonic() + timeout_s
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # connection refused is expected while it boots
    try:
        while time.monotonic() < deadline:
            if pid is not None and not pid_alive(pid):
                raise LocalServiceError("the Kafka broker exited during startup")
            if asyncio.run(probe()):
                return
            time.sleep(0.3)
    finally:
        quiet.setLevel(level)
    raise LocalServiceError(
        f"the Kafka broker at {bootstrap} did not answer within {timeout_s:.0f} s")


def start(port: int = 9092, data_dir: Path | None = None, timeout_s: float = 90.0,
          version: str = KAFKA_VERSION) -> tuple[BrokerState, bool]:
    """Start a broker for ``data_dir``; returns (state, started_now)."""
    data_dir = (data_dir or default_data_dir()).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    current = running_broker(data_dir)
    if current is not None:
        return current, False
    if not port_free(port):
        raise LocalServiceError(
            f"port {port} on 127.0.0.1 is already in use by another program; "
            f"choose another with --port")
    previous = read_state(data_dir)
    controller_port = previous.controller_port if previous else 0
    if not controller_port or controller_port == port or not port_free(controller_port):
        controller_port = free_port()
    java = _java()
    cp = _classpath(version)
    props = data_dir / "server.properties"
    props.write_text(_server_properties(data_dir, port, controller_port))
    _format_storage(java, cp, data_dir, props)
    log = open(data_dir / LOG_FILE, "ab")  # noqa: SIM115 - handed to the child process
    try:
        proc = subprocess.Popen(
            [java, *JAVA_OPTS, "-cp", cp, _log4j_flag(), "kafka.Kafka", str(props)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=data_dir)
    finally:
        log.close()
    state = BrokerState(proc.pid, port, controller_port, version)
    (data_dir / STATE_FILE).write_text(json.dumps(state.__dict__))
    try:
        wait_until_ready(state.bootstrap, timeout_s, pid=proc.pid)
    except LocalServiceError as exc:
        _terminate(proc.pid, 10)
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        raise LocalServiceError(f"{exc}; last lines of {data_dir / LOG_FILE}:\n"
                                f"{tail(data_dir / LOG_FILE)}") from None
    return state, True


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _terminate(pid: int, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def stop(data_dir: Path | None = None, timeout_s: float = 30.0) -> BrokerState | None:
    """Stop the broker of ``data_dir`` (a clean shutdown, SIGKILL after ``timeout_s``)."""
    data_dir = (data_dir or default_data_dir()).resolve()
    state = running_broker(data_dir)
    if state is not None:
        _terminate(state.pid, timeout_s)
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return state
