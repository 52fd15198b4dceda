"""How every Kafka client of the product connects: the worker's Faust app, its own aiokafka
clients (recovery, standbys, lag) and the tools (produce, demo, bench), from one
``KafkaSecurity`` (contract section 10)."""

from __future__ import annotations

import asyncio
import functools
import ssl
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.helpers import create_ssl_context

from streams.settings import KafkaSecurity


@functools.cache
def ssl_context(security: KafkaSecurity) -> ssl.SSLContext | None:
    """One context per process (hostnames verified; the CA file, else the system's CAs)."""
    if not security.tls:
        return None
    context: ssl.SSLContext = create_ssl_context(cafile=security.cafile or None,
                                                 certfile=security.certfile or None,
                                                 keyfile=security.keyfile or None)
    return context


def client_options(security: KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for an aiokafka producer, consumer or admin client."""
    options: dict[str, Any] = {"security_protocol": security.protocol}
    if security.tls:
        options["ssl_context"] = ssl_context(security)
    if security.sasl:
        options.update(sasl_mechanism=security.sasl_mechanism,
                       sasl_plain_username=security.username,
                       sasl_plain_password=security.password)
    return options


def faust_options(security: KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for ``faust.App``: Faust turns its credential objects into the same
    aiokafka arguments (faust/transport/drivers/aiokafka.py, credentials_to_aiokafka_auth)."""
    if security.sasl:
        credentials = faust.SASLCredentials(username=security.username,
                                            password=security.password,
                                            ssl_context=ssl_context(security),
                                            mechanism=security.sasl_mechanism)
        return {"broker_credentials": credentials}
    if security.tls:
        return {"broker_credentials": faust.SSLCredentials(ssl_context(security))}
    return {}


async def start_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.start()`` for a consumer without a group, safe to stop at once.

    aiokafka 0.14: such a consumer's ``stop()`` cancels and awaits a coordinator task
    (``NoGroupCoordinator._reset_committed_routine``); cancelled before its first step, that
    task re-raises ``CancelledError`` out of ``stop()``, e.g. when the first request after
    ``start()`` fails at once. One step of the loop lets the task enter its ``try``.
    Guarded by tests/integration/test_foundation.py."""
    await consumer.start()
    await asyncio.sleep(0)
