"""The JSON Schemas (draft 2020-12) of the records on Kafka (contract section 4c): the input
event, the change event and the count value. The files live in ``streams/codec/schemas/``
(``schemas/`` at the repository's root links there), are shipped as package data and served by
every worker at ``GET /schemas/<name>.json``; tests check the codec and every record the product
writes against them."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Final

import orjson

# Schema name -> what it describes.
SCHEMAS: Final = {
    "input": "recommendation-weight event (input topic value)",
    "change": "count change event (segment-count-changes value)",
    "count": "current count of a segment (segment-counts value; null: tombstone)",
}


@functools.cache
def schema_bytes(name: str) -> bytes:
    """The schema file ``<name>.json`` as shipped; KeyError for a name not in ``SCHEMAS``."""
    if name not in SCHEMAS:
        raise KeyError(name)
    return resources.files("streams.codec").joinpath(f"schemas/{name}.json").read_bytes()


def schema(name: str) -> dict[str, Any]:
    """The schema ``name`` as a JSON document (a fresh copy)."""
    document: dict[str, Any] = orjson.loads(schema_bytes(name))
    return document
