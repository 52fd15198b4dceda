"""The aiokafka producer inside Faust's (written against faust-streaming 0.15.3:
``Producer._ensure_producer``, ``Producer._settings_extra``): the sink sends whole record
batches, which Faust's producer does not offer; and it is idempotent, which Faust makes it only
inside transactions."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer


def raw_producer(app: Any) -> AIOKafkaProducer:
    """The started app's aiokafka producer (raises Faust's NotReady before it starts)."""
    producer: AIOKafkaProducer = app.producer._ensure_producer()
    return producer


def idempotent(app: Any) -> None:
    """Make the app's producer idempotent (before it starts): a retried batch is never written
    twice, so the broker's offsets of the worker's own records follow each other (the change
    versions and the fence of domain/ledger.py rely on it) and no output record is doubled by a
    retry (contract §4)."""
    app.producer._settings_extra = lambda: {"acks": "all", "enable_idempotence": True}
