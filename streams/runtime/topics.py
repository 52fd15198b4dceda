"""The product's topics: the worker waits for the broker and creates those that are missing."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.settings import Settings


async def ensure_topics(settings: Settings, wait_s: float = 120.0) -> None:
    """Wait for the broker (with clear messages) and create the product's topics if missing."""
    deadline = time.monotonic() + wait_s
    admin: AIOKafkaAdminClient | None = None
    announced = False
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                    request_timeout_ms=5000)
        try:
            await admin.start()
            break
        except KafkaError as exc:
            await admin.close()
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
