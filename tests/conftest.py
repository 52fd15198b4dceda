"""Session-wide real services: one Kafka broker and one Redis on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.tools import kafka_local
from streams.tools.redis_local import RedisServer

# Every broker the tests start, in-process or through `segments`, lives minutes: it should start
# fast rather than run fast.
os.environ.setdefault("SEGMENTS_KAFKA_JAVA_OPTS", " ".join(kafka_local.QUICK_JAVA_OPTS))


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kafka_local.BrokerState]:
    data = tmp_path_factory.mktemp("kafka")
    state, _ = kafka_local.start(port=kafka_local.free_port(), data_dir=data)
    try:
        yield state
    finally:
        # Its data is thrown away: a clean shutdown (flushing every test's partitions) is not
        # worth waiting for.
        kafka_local.stop(data, timeout_s=3.0)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: kafka_local.BrokerState) -> str:
    return kafka_broker.bootstrap


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    os.environ.setdefault("SEGMENTS_LOG_LEVEL", "WARNING")
    return tmp_path
