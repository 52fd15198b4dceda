"""The product's topics: the worker waits for the broker, checks the topics that exist and
creates those that are missing (contract section 11, "Topics are checked at start").

The rules are pure functions (:func:`default_replication_factor`, :func:`min_insync_replicas`,
:func:`partition_mismatch`, :func:`weaknesses`); :func:`ensure_topics` applies them to what
the broker's admin API says."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
)

from streams.codec.names import Names
from streams.runtime.exceptions import TopicMismatch
from streams.runtime.kafka_clients import client_options
from streams.settings import Settings

logger = logging.getLogger(__name__)

MAX_DEFAULT_REPLICATION = 3
MAX_MIN_INSYNC = 2

# Answers that no retry changes: the credentials, the mechanism or the certificate are wrong.
_REFUSALS = (SaslAuthenticationFailed, AuthenticationFailedError, AuthenticationMethodNotSupported,
             UnsupportedSaslMechanismError, IllegalSaslStateError, ssl.SSLError)


async def refusal(settings: Settings, timeout_s: float = 10.0) -> str | None:
    """Why the broker refuses this worker's connections, when it does (credentials, TLS);
    None when it is unreachable or accepts them. aiokafka's clients say only "Unable to
    bootstrap" (the reason goes to their log); one connection made by hand says why."""
    host, _, port = settings.bootstrap_servers.split(",")[0].strip().rpartition(":")
    if not port.isdigit():
        return None
    try:
        conn = await asyncio.wait_for(create_conn(
            host.strip("[]"), int(port), request_timeout_ms=int(timeout_s * 1000),
            **client_options(settings.kafka_security)), timeout_s)
    except _REFUSALS as exc:
        return f"{type(exc).__name__}: {exc}"
    except ValueError as exc:  # aiokafka's SCRAM: the server's signature is not the expected
        return f"SCRAM: {exc}"
    except (OSError, TimeoutError, KafkaError):
        return None
    conn.close()
    return None


# -- the rules ------------------------------------------------------------------------------------

def default_replication_factor(brokers: int) -> int:
    """SEGMENTS_REPLICATION_FACTOR unset: as many replicas as the cluster has brokers, up to 3."""
    return max(1, min(MAX_DEFAULT_REPLICATION, brokers))


def min_insync_replicas(replication_factor: int) -> int:
    """A write with acks=all needs this many replicas: with RF >= 3, one broker may be down
    and no acknowledged write lives on a single broker."""
    return max(1, min(MAX_MIN_INSYNC, replication_factor))


@dataclass(frozen=True)
class WantedTopic:
    """A topic of the product and what it must be."""

    name: str
    fixed_partitions: bool  # keyed by a hash over SEGMENTS_PARTITIONS: the count must match
    compacted: bool  # holds state: one record per key must survive


def wanted_topics(names: Names) -> list[WantedTopic]:
    """The topics the worker uses, in the order they are checked and created. The input may
    have any partition count: its records are repartitioned by segment family."""
    return [WantedTopic(names.input_topic, False, False),
            WantedTopic(names.dlq_topic, False, False),
            WantedTopic(names.changes_topic, False, False),
            # A table of current counts (contract §4b): compacted, one record per segment key.
            WantedTopic(names.counts_topic, False, True),
            WantedTopic(names.repartition_topic, True, False),
            *(WantedTopic(t, True, True) for t in names.changelog_topics)]


@dataclass(frozen=True)
class ExistingTopic:
    """What the broker says of a topic."""

    name: str
    partitions: int
    replication_factor: int
    min_insync_replicas: int | None = None  # None: not known
    cleanup_policy: str | None = None


def partition_mismatch(topic: ExistingTopic, partitions: int) -> str | None:
    """Why ``topic`` (keyed by a hash over the partition count) cannot be used with
    SEGMENTS_PARTITIONS=``partitions``, with the fix; None when it can."""
    if topic.partitions == partitions:
        return None
    return (f"topic {topic.name} has {topic.partitions} partitions, SEGMENTS_PARTITIONS is "
            f"{partitions}: its records are placed by a hash over the partition count, so "
            f"this worker would read and count them on the wrong partitions. Fix: set "
            f"SEGMENTS_PARTITIONS={topic.partitions} (what the app id's topics were created "
            f"with), or start with a new SEGMENTS_APP_ID, whose topics are created with "
            f"{partitions} partitions (its state is rebuilt from the input topic, as far as "
            f"the input retains records)")


@dataclass(frozen=True)
class TopicWarning:
    """An existing topic with weaker settings than the worker would create it with."""

    topic: str
    setting: str  # replication.factor, min.insync.replicas or cleanup.policy
    message: str


def weaknesses(topic: ExistingTopic, wanted: WantedTopic, brokers: int) -> list[TopicWarning]:
    """What makes ``topic`` weaker than the rule: RF 1 on a multi-broker cluster,
    min.insync.replicas 1 with RF >= 3, a state topic that is not compacted."""
    found = []
    rf = topic.replication_factor
    if rf == 1 and brokers > 1:
        want = default_replication_factor(brokers)
        found.append(TopicWarning(
            topic.name, "replication.factor",
            f"topic {topic.name} has replication factor 1 on a cluster of {brokers} brokers: "
            f"losing one broker loses its records; raise it to {want} (kafka-reassign-"
            f"partitions) and set min.insync.replicas={min_insync_replicas(want)}"))
    if topic.min_insync_replicas == 1 and rf >= 3:
        found.append(TopicWarning(
            topic.name, "min.insync.replicas",
            f"topic {topic.name} has min.insync.replicas 1 with replication factor {rf}: an "
            f"acknowledged write may live on one broker only; set min.insync.replicas="
            f"{min_insync_replicas(rf)} (kafka-configs --alter)"))
    policy = topic.cleanup_policy
    if wanted.compacted and policy is not None and "compact" not in policy.split(","):
        found.append(TopicWarning(
            topic.name, "cleanup.policy",
            f"topic {topic.name} holds state but is not compacted (cleanup.policy={policy}): "
            f"its old records are deleted, and state rebuilt from it is lost; set "
            f"cleanup.policy=compact (kafka-configs --alter)"))
    return found


def new_topic(wanted: WantedTopic, partitions: int, replication_factor: int) -> NewTopic:
    configs = {"min.insync.replicas": str(min_insync_replicas(replication_factor))}
    if wanted.compacted:
        configs["cleanup.policy"] = "compact"
    return NewTopic(wanted.name, partitions, replication_factor, topic_configs=configs)


# -- the broker ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TopicReport:
    """What the check at start found: the replication factor topics are created with, the
    brokers in the cluster and the warnings about existing topics."""

    replication_factor: int
    brokers: int
    warnings: list[TopicWarning] = field(default_factory=list)
    created: list[str] = field(default_factory=list)


async def describe(admin: AIOKafkaAdminClient, topics: Iterable[str]) -> dict[str, ExistingTopic]:
    """Partition counts, replication factors, min.insync.replicas and cleanup.policy of
    ``topics`` (which must exist: a broker that creates topics on demand creates those it is
    asked about)."""
    names = list(topics)
    if not names:
        return {}
    described = await admin.describe_topics(names)
    configs = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, t,
                        {"min.insync.replicas": None, "cleanup.policy": None}) for t in names])
    entries: dict[str, dict[str, str]] = {}
    for response in configs:
        for resource in response.to_object()["resources"]:
            entries[resource["resource_name"]] = {
                e["config_names"]: e["config_value"] for e in resource["config_entries"]}
    out = {}
    for t in described:
        name = t["topic"]
        if t["error_code"] != 0 or not t["partitions"]:
            continue
        conf = entries.get(name, {})
        insync = conf.get("min.insync.replicas")
        out[name] = ExistingTopic(
            name, len(t["partitions"]),
            max(len(p["replicas"]) for p in t["partitions"]),
            int(insync) if insync and insync.isdigit() else None,
            conf.get("cleanup.policy"))
    return out


async def ensure_topics(settings: Settings, wait_s: float = 120.0) -> TopicReport:
    """Wait for the broker (with clear messages), check the product's existing topics (a
    partition count that differs raises :class:`TopicMismatch`; weaker settings are warned
    about) and create those that are missing."""
    deadline = time.monotonic() + wait_s
    admin: AIOKafkaAdminClient | None = None
    announced = False
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                    request_timeout_ms=5000,
                                    **client_options(settings.kafka_security))
        try:
            await admin.start()
            break
        except KafkaError as exc:
            await admin.close()
            refused = await refusal(settings)
            if refused is not None:
                raise SystemExit(
                    f"Kafka at {settings.bootstrap_servers} refuses this worker: {refused} "
                    f"(KAFKA_SECURITY_PROTOCOL={settings.kafka_security.protocol}, "
                    f"KAFKA_SASL_MECHANISM={settings.kafka_security.sasl_mechanism}, "
                    f"KAFKA_SASL_USERNAME={settings.kafka_security.username!r})") from None
            if time.monotonic() > deadline:
                raise SystemExit(f"Kafka at {settings.bootstrap_servers} is not reachable: {exc}"
                                 ) from None
            if not announced:
                print(f"waiting for Kafka at {settings.bootstrap_servers} ...", file=sys.stderr)
                announced = True
            await asyncio.sleep(1.0)
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
        rf = settings.replication_factor or default_replication_factor(brokers)
        if rf > brokers:
            raise SystemExit(
                f"SEGMENTS_REPLICATION_FACTOR={rf} but the cluster at "
                f"{settings.bootstrap_servers} has {brokers} broker(s): topics cannot be "
                f"created with more replicas than brokers; unset it (default: min(3, brokers))")
        wanted = wanted_topics(settings.names)
        existing = set(await admin.list_topics())
        present = await describe(admin, [t.name for t in wanted if t.name in existing])
        mismatches = [m for t in wanted if t.fixed_partitions and t.name in present
                      if (m := partition_mismatch(present[t.name], settings.partitions))]
        if mismatches:
            raise TopicMismatch("\n".join(mismatches))
        warnings = [w for t in wanted if t.name in present
                    for w in weaknesses(present[t.name], t, brokers)]
        for w in warnings:
            logger.warning("%s", w.message)
        # The changelogs too, before the consumer subscribes: a topic Faust creates only at
        # startup may be missing from the broker's first metadata answer; aiokafka then leaves
        # it out until its next periodic refresh (5 min) and the group leader's assignor skips
        # it ("Ignoring missing topic"), so its partitions are never assigned or recovered.
        new = [new_topic(t, settings.partitions, rf) for t in wanted if t.name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was first
                await admin.create_topics(new)
        return TopicReport(rf, brokers, warnings, [t.name for t in new])
    finally:
        await admin.close()
