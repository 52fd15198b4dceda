"""`segments kafka start|stop|status` as a user runs them (contract section 5).

The tests run the real console script on one data folder and free port of this module, and
never the session broker of tests/conftest.py: the commands themselves are under test. Each test
takes that broker as it finds it (running or not) and leaves it either way, so the module needs
few starts; each checks, as it ends, that no broker process but the running one is left, and
the module's end stops that one and checks it gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.tools import kafka_local

SEGMENTS = Path(sys.executable).parent / "segments"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not SEGMENTS.exists(), reason=f"no `segments` console script at {SEGMENTS}"),
]

# The first start on a machine may resolve the broker's jars with Maven first.
START_TIMEOUT_S = 300.0


@dataclass
class LocalKafka:
    """Runs `segments kafka ...` for one data folder and remembers every broker pid it saw."""

    data: Path
    port: int
    pids: set[int] = field(default_factory=set)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(SEGMENTS), "kafka", *args, "--data", str(self.data)],
                              capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
        self.remember_pid()
        return proc

    def start(self) -> subprocess.CompletedProcess[str]:
        return self.run("start", "--port", str(self.port), timeout=START_TIMEOUT_S)

    def stop(self) -> subprocess.CompletedProcess[str]:
        return self.run("stop")

    def status(self) -> subprocess.CompletedProcess[str]:
        return self.run("status")

    def pid(self) -> int | None:
        try:
            return int(json.loads((self.data / kafka_local.STATE_FILE).read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remember_pid(self) -> None:
        pid = self.pid()
        if pid is not None:
            self.pids.add(pid)


@pytest.fixture(scope="module")
def module_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = LocalKafka(tmp_path_factory.mktemp("cli") / "kafka", kafka_local.free_port())
    try:
        yield broker
    finally:
        broker.remember_pid()
        broker.stop()
        _no_broker_left(broker, keep=None)


@pytest.fixture
def kafka(module_kafka: LocalKafka) -> Iterator[LocalKafka]:
    try:
        yield module_kafka
    finally:
        module_kafka.remember_pid()
        running = kafka_local.running_broker(module_kafka.data)
        _no_broker_left(module_kafka, keep=running.pid if running else None)


def _no_broker_left(broker: LocalKafka, keep: int | None) -> None:
    """Every broker process seen but ``keep`` is gone (killed if not: never leave one behind)."""
    left = [pid for pid in broker.pids if pid != keep and not _gone(pid, timeout_s=15.0)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    broker.pids &= {keep} if keep is not None else set()
    assert not left, f"`segments kafka stop` left broker process(es) {left} running"


def _stopped(kafka: LocalKafka) -> None:
    """The module's broker stopped (the state a test that starts from nothing needs)."""
    pid = kafka.pid()
    _ok(kafka.stop())
    assert pid is None or _gone(pid, timeout_s=15.0)
    assert _port_freed(kafka.port)


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while kafka_local.pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _port_freed(port: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not kafka_local.port_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def _cluster_id(data: Path) -> str:
    for line in (data / "data" / "meta.properties").read_text().splitlines():
        if line.startswith("cluster.id="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("meta.properties names no cluster.id")


# In this order each test finds the broker as the one before left it, which saves starts.
def test_port_in_use_is_a_clear_one_line_error(kafka: LocalKafka) -> None:
    _stopped(kafka)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", kafka.port))
        taken.listen(1)
        proc = kafka.start()
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("segments: error:"), lines
    assert str(kafka.port) in lines[0] and "in use" in lines[0], lines
    assert kafka.status().returncode == 1


def test_start_stop_twice_reuses_the_formatted_data_folder(kafka: LocalKafka) -> None:
    _stopped(kafka)
    cluster_id = None
    for round_ in (1, 2):
        out = _ok(kafka.start())
        assert "started" in out, out
        assert kafka.bootstrap in out, out
        pid = kafka.pid()
        assert pid is not None and kafka_local.pid_alive(pid)
        assert kafka.bootstrap in _ok(kafka.status())
        if round_ == 1:
            cluster_id = _cluster_id(kafka.data)
        else:  # the second start found the folder formatted and kept its cluster
            assert _cluster_id(kafka.data) == cluster_id

        assert "stopped" in _ok(kafka.stop())
        assert _gone(pid, timeout_s=5.0), f"broker pid {pid} still alive after stop"
        assert _port_freed(kafka.port), f"port {kafka.port} still in use after stop"
        status = kafka.status()
        assert status.returncode == 1, status
        assert "not running" in status.stdout


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"e2e")
    finally:
        await producer.stop()


async def _consume_all(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[bytes]:
    """Every value of partition 0 of ``topic`` (at least one, or [] after ``timeout_s``)."""
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            values.extend(r.value for r in batch.get(tp, []) if r.value is not None)
            if values and await consumer.position(tp) >= (await consumer.end_offsets([tp]))[tp]:
                break
    finally:
        await consumer.stop()
    return values


def test_data_survives_a_restart(kafka: LocalKafka) -> None:
    topic = "e2e-restart"
    value = f"kept-{uuid.uuid4()}".encode()
    _ok(kafka.start())
    asyncio.run(_produce(kafka.bootstrap, topic, value))
    first_pid = kafka.pid()
    _ok(kafka.stop())
    assert first_pid is not None and _gone(first_pid, timeout_s=5.0)

    out = _ok(kafka.start())
    assert "started" in out and kafka.bootstrap in out, out
    assert kafka.pid() != first_pid
    assert asyncio.run(_consume_all(kafka.bootstrap, topic)) == [value]


def test_second_start_while_running_says_already_running(kafka: LocalKafka) -> None:
    _ok(kafka.start())
    pid = kafka.pid()
    again = kafka.start()
    out = _ok(again)
    assert "already running" in out, out
    assert kafka.bootstrap in out, out
    assert kafka.pid() == pid
    assert f"pid {pid}" in out
