"""Records read from the product's topics checked against schemas/ (contract 4c)."""

from __future__ import annotations

from typing import Any

import orjson
from jsonschema_rs import Draft202012Validator

from streams.codec.json_schemas import schema

# jsonschema-rs: the fault tests read a hundred thousand records (the Python jsonschema takes
# ~0.1 ms each); tests/unit/codec/test_json_schemas.py checks that both implementations agree.
VALIDATORS = {name: Draft202012Validator(schema(name)) for name in ("input", "change", "count")}
SEGMENT_KEY = Draft202012Validator(schema("count")["$defs"]["segment_key"])
assert schema("change")["$defs"]["segment_key"] == schema("count")["$defs"]["segment_key"]


def _problem(validator: Draft202012Validator, document: Any) -> str | None:
    if validator.is_valid(document):
        return None
    error = next(iter(validator.iter_errors(document)))
    return f"{error.message} at {list(error.instance_path)}"


def record_problems(records: list[Any], kind: str, limit: int = 5,
                    values: list[Any] | None = None) -> list[str]:
    """What breaks its schema in ``records`` (aiokafka records) of the ``kind`` topic
    (``change``: segment-count-changes, ``count``: segment-counts): the key is the segment key of
    its value, the value validates, and a tombstone (count topic only) has a version header.
    ``values``: the records' values already parsed, in the same order."""
    problems: list[str] = []
    keys_seen: set[bytes] = set()  # (a key is checked once: thousands of records share one)
    for i, r in enumerate(records):
        where = f"{kind} record {r.partition}@{r.offset}"
        if r.key not in keys_seen:
            try:
                key = orjson.loads(r.key)
            except (TypeError, orjson.JSONDecodeError):
                problems.append(f"{where}: key {r.key!r} is not JSON")
                continue
            if (why := _problem(SEGMENT_KEY, key)) is not None:
                problems.append(f"{where}: key {r.key!r}: {why}")
            else:
                keys_seen.add(r.key)
        if r.value is None:
            version = dict(r.headers or ()).get("version", b"")
            if kind != "count" or not version.isdigit():
                problems.append(f"{where}: a tombstone with version header {version!r}")
            continue
        value = orjson.loads(r.value) if values is None else values[i]
        if (why := _problem(VALIDATORS[kind], value)) is not None:
            problems.append(f"{where}: {r.value[:200]!r}: {why}")
        elif orjson.dumps([value[f] for f in ("program_id", "segment_type", "segment_basis",
                                              "segment_basis_id", "action_type", "min_weight")]
                          ) != r.key:  # (orjson writes the compact form the contract names)
            problems.append(f"{where}: key {r.key!r} is not the segment key of its value")
        if len(problems) >= limit:
            break
    return problems
