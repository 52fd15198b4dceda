"""The aiokafka producer inside Faust's (written against faust-streaming 0.15.3:
``Producer._ensure_producer``): the sink sends whole record batches, which Faust's producer
does not offer."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer


def raw_producer(app: Any) -> AIOKafkaProducer:
    """The started app's aiokafka producer (raises Faust's NotReady before it starts)."""
    producer: AIOKafkaProducer = app.producer._ensure_producer()
    return producer
