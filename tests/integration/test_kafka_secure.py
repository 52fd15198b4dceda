"""`segments kafka start --sasl USER:PASSWORD [--tls]`: SCRAM-SHA-512 only, nobody else gets in.

Each broker here is its own (a free port, a tmp data folder), started once for the module.
What aiokafka 0.14 does with bad credentials, measured here: producer, consumer and admin client
``start()`` all raise ``KafkaConnectionError("Unable to bootstrap from [...]")`` within about
0.4 s and do not retry; the cause (``SaslAuthenticationFailed ... invalid credentials``) is only
logged by the ``aiokafka`` logger at ERROR. A client without SASL or without TLS fails the same
way at once ("Connection at ... closed").
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError
from aiokafka.helpers import create_ssl_context

from streams.runtime.kafka_clients import client_options
from streams.settings import KafkaSecurity
from streams.tools import kafka_local
from streams.tools.produce import generate
from tests.support.harness import (
    Cluster,
    feed,
    final_check,
    read_topic_complete,
)
from tests.support.oracle import Oracle

pytestmark = pytest.mark.integration

USER = "segments"
# Characters the JAAS option, the properties file and `--add-scram` each treat specially.
ODD_PASSWORD = 'p,a"s\\s=w]ö rd;€'
FAIL_WITHIN_S = 10.0


def _start(tmp: Path, password: str, tls: bool) -> Iterator[kafka_local.BrokerState]:
    data = tmp / "kafka"
    state, _ = kafka_local.start(port=kafka_local.free_port(), data_dir=data,
                                 sasl=(USER, password), tls=tls)
    try:
        yield state
    finally:
        kafka_local.stop(data)


@pytest.fixture(scope="module")
def sasl_ssl_broker(tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[kafka_local.BrokerState]:
    yield from _start(tmp_path_factory.mktemp("sasl-ssl"), "s3cret-ssl", tls=True)


@pytest.fixture(scope="module")
def sasl_plaintext_broker(tmp_path_factory: pytest.TempPathFactory
                          ) -> Iterator[kafka_local.BrokerState]:
    yield from _start(tmp_path_factory.mktemp("sasl-plain"), ODD_PASSWORD, tls=False)


def _client_kwargs(env: dict[str, str]) -> dict[str, Any]:
    """aiokafka settings built from the environment the broker hands to clients."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": env["KAFKA_BOOTSTRAP_SERVERS"],
        "security_protocol": env["KAFKA_SECURITY_PROTOCOL"],
        "sasl_mechanism": env["KAFKA_SASL_MECHANISM"],
        "sasl_plain_username": env["KAFKA_SASL_USERNAME"],
        "sasl_plain_password": env["KAFKA_SASL_PASSWORD"]}
    if "KAFKA_SSL_CAFILE" in env:
        kwargs["ssl_context"] = create_ssl_context(cafile=env["KAFKA_SSL_CAFILE"])
    return kwargs


async def _round_trip(kwargs: dict[str, Any], topic: str) -> None:
    producer = AIOKafkaProducer(acks="all", **kwargs)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, group_id=f"{topic}-group",
                                auto_offset_reset="earliest", **kwargs)
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 20)
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"k", b"hello")


async def test_sasl_ssl_round_trip_with_the_printed_settings(
        sasl_ssl_broker: kafka_local.BrokerState) -> None:
    env = sasl_ssl_broker.client_env()
    cafile = Path(sasl_ssl_broker.ssl_cafile or "")
    assert env == {"KAFKA_BOOTSTRAP_SERVERS": sasl_ssl_broker.bootstrap,
                   "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                   "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                   "KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": "s3cret-ssl",
                   "KAFKA_SSL_CAFILE": str(cafile)}
    _check_files(sasl_ssl_broker, cafile)
    kwargs = _client_kwargs(env)
    # The client checks the certificate and that it names 127.0.0.1, the bootstrap host.
    assert kwargs["ssl_context"].check_hostname
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    await _round_trip(kwargs, "secure-ssl-roundtrip")


def _check_files(state: kafka_local.BrokerState, cafile: Path) -> None:
    assert cafile.name == "ca.pem" and cafile.read_text().startswith("-----BEGIN CERTIFICATE")
    # What holds a password is readable by its owner only; the state file has what clients need.
    data = cafile.parent
    for name in ("server.properties", "broker.json", "scram.json", "tls/keystore.password"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    assert kafka_local.read_state(data) == state


async def test_sasl_plaintext_round_trip_with_an_awkward_password(
        sasl_plaintext_broker: kafka_local.BrokerState) -> None:
    env = sasl_plaintext_broker.client_env()
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert env["KAFKA_SASL_PASSWORD"] == ODD_PASSWORD
    assert "KAFKA_SSL_CAFILE" not in env
    await _round_trip(_client_kwargs(env), "secure-plain-roundtrip")


def _clients(kwargs: dict[str, Any]) -> dict[str, Callable[[], Awaitable[None]]]:
    """start() of each aiokafka client kind, closing it whatever happens."""
    def run(make: Callable[[], Any]) -> Callable[[], Awaitable[None]]:
        async def go() -> None:
            client = make()
            try:
                await client.start()
                if isinstance(client, AIOKafkaAdminClient):
                    await client.describe_cluster()
            finally:
                await (client.close() if isinstance(client, AIOKafkaAdminClient)
                       else client.stop())
        return go

    return {"producer": run(lambda: AIOKafkaProducer(**kwargs)),
            "consumer": run(lambda: AIOKafkaConsumer("secure-refused", group_id="refused",
                                                     **kwargs)),
            "admin": run(lambda: AIOKafkaAdminClient(**kwargs))}


async def _refused(kwargs: dict[str, Any]) -> dict[str, float]:
    """Seconds each client took to fail: all raise "Unable to bootstrap", none retries."""
    took = {}
    for kind, go in _clients(kwargs).items():
        t0 = time.monotonic()
        with pytest.raises(KafkaConnectionError, match="Unable to bootstrap from"):
            await asyncio.wait_for(go(), FAIL_WITHIN_S)
        took[kind] = time.monotonic() - t0
    return took


@pytest.mark.parametrize("wrong", ["password", "user"])
async def test_wrong_credentials_fail_at_start_within_seconds(
        sasl_ssl_broker: kafka_local.BrokerState, caplog: pytest.LogCaptureFixture,
        wrong: str) -> None:
    kwargs = _client_kwargs(sasl_ssl_broker.client_env())
    kwargs["sasl_plain_password" if wrong == "password" else "sasl_plain_username"] = "nope"
    caplog.set_level(logging.ERROR, logger="aiokafka")
    took = await _refused(kwargs)
    assert max(took.values()) < 5, took
    # The exception does not say why; aiokafka's log does, once per client.
    causes = [r.getMessage() for r in caplog.records if r.name == "aiokafka"]
    assert len(causes) >= 3, causes
    assert all("SaslAuthenticationFailed" in c and "invalid credentials" in c for c in causes)


@pytest.mark.parametrize("client", ["plaintext", "sasl-without-tls", "tls-without-sasl",
                                    "tls-with-the-system-cas"])
async def test_clients_without_scram_over_tls_are_refused(
        sasl_ssl_broker: kafka_local.BrokerState, caplog: pytest.LogCaptureFixture,
        client: str) -> None:
    good = _client_kwargs(sasl_ssl_broker.client_env())
    kwargs: dict[str, Any] = {"bootstrap_servers": good["bootstrap_servers"]}
    if client == "sasl-without-tls":
        kwargs |= {k: v for k, v in good.items() if k.startswith("sasl_")}
        kwargs["security_protocol"] = "SASL_PLAINTEXT"
    elif client == "tls-without-sasl":
        kwargs |= {"security_protocol": "SSL", "ssl_context": good["ssl_context"]}
    elif client == "tls-with-the-system-cas":
        kwargs = {**good, "ssl_context": create_ssl_context()}
    caplog.set_level(logging.WARNING, logger="aiokafka")
    took = await _refused(kwargs)
    assert max(took.values()) < 5, took
    if client == "tls-with-the-system-cas":
        assert all("CERTIFICATE_VERIFY_FAILED" in r.getMessage()
                   for r in caplog.records if r.name == "aiokafka")


# -- the product's own clients: a worker on the secured broker -------------------------------
WORKER_EXIT_S = 30.0


def _secured_cluster(state: kafka_local.BrokerState, run_dir: Path,
                     **env: str) -> Cluster:
    client_env = state.client_env()
    return Cluster(client_env.pop("KAFKA_BOOTSTRAP_SERVERS"), run_dir,
                   extra_env=client_env | env,
                   kafka=client_options(KafkaSecurity.from_env(state.client_env())))


async def test_workers_on_a_sasl_ssl_broker_pass_the_exact_final_check(
        sasl_ssl_broker: kafka_local.BrokerState, run_dir: Path) -> None:
    cluster = _secured_cluster(sasl_ssl_broker, run_dir)
    records = list(generate(3_000, seed=1702, programs=2, users=500, labels=40, assets=80,
                            invalid_ratio=0.01))
    oracle = Oracle()
    oracle.feed(records)
    workers = [cluster.add_worker(), cluster.add_worker()]
    try:
        await feed(cluster, workers, records)
        report = await final_check(cluster, oracle, workers)  # (reads the changes too)
        assert report.change_events > 0
        dead = await read_topic_complete(cluster.bootstrap, cluster.dlq_topic, **cluster.kafka)
        assert len(dead) == sum(1 for r in records if not r.valid)
    finally:
        cluster.stop_all()


@pytest.mark.parametrize("wrong", ["password", "ca"])
async def test_a_worker_with_bad_credentials_exits_with_a_clear_message(
        sasl_ssl_broker: kafka_local.BrokerState, run_dir: Path, wrong: str) -> None:
    env = ({"KAFKA_SASL_PASSWORD": "not-the-password"} if wrong == "password"
           else {"KAFKA_SSL_CAFILE": ""})  # the system's CAs: the broker's is not among them
    cluster = _secured_cluster(sasl_ssl_broker, run_dir, **env)
    worker = cluster.add_worker()
    started = time.monotonic()
    try:
        assert worker.proc is not None
        code = await asyncio.to_thread(worker.proc.wait, WORKER_EXIT_S)
    finally:
        worker.kill()
    took = time.monotonic() - started
    log = worker.log()
    assert code == 1 and took < WORKER_EXIT_S, log
    assert "refuses this worker" in log, log
    assert ("SaslAuthenticationFailed" if wrong == "password" else "CERTIFICATE_VERIFY_FAILED"
            ) in log, log
    assert "not-the-password" not in log
    print(f"\nbad {wrong}: the worker exited ({code}) after {took:.1f}s")
