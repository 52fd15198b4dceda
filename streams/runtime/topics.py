"""The product's topics: the worker waits for the broker and creates those that are missing."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
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

from streams.runtime.kafka_clients import client_options
from streams.settings import Settings

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


async def ensure_topics(settings: Settings, wait_s: float = 120.0) -> None:
    """Wait for the broker (with clear messages) and create the product's topics if missing."""
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
        existing = set(await admin.list_topics())
        names = settings.names
        wanted = [names.input_topic, names.dlq_topic, names.changes_topic,
                  names.repartition_topic]
        new = [NewTopic(t, settings.partitions, settings.replication_factor)
               for t in wanted if t not in existing]
        # The changelogs too, before the consumer subscribes: a topic Faust creates only at
        # startup may be missing from the broker's first metadata answer; aiokafka then leaves
        # it out until its next periodic refresh (5 min) and the group leader's assignor skips
        # it ("Ignoring missing topic"), so its partitions are never assigned or recovered.
        new += [NewTopic(t, settings.partitions, settings.replication_factor,
                         topic_configs={"cleanup.policy": "compact"})
                for t in names.changelog_topics if t not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was first
                await admin.create_topics(new)
    finally:
        await admin.close()
