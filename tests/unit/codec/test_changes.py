"""The segment key and the two output values (contract §4, §4b)."""

from __future__ import annotations

import json

import orjson
import pytest

from streams.codec.changes import change_payload, count_payload, segment_key
from streams.domain.ledger import CountChange


@pytest.mark.parametrize(("family", "segment_type", "m"), [
    (("p1", "label", "l1", "view"), "growth", 0.5),
    (("prógram \"x\"", "asset", "a/é\n", "buy"), "discovery", 1.0),
    (("p", "asset", "a", "view"), "base", 0.0),
    (("p", "label", "l", "view"), "growth", 0.25),
])
def test_the_segment_key_is_the_contracts_compact_json_array(
        family: tuple[str, str, str, str], segment_type: str, m: float) -> None:
    program, basis, basis_id, action = family
    want = json.dumps([program, segment_type, basis, basis_id, action, m],
                      separators=(",", ":"), ensure_ascii=False).encode()
    assert segment_key((family, segment_type, m)) == want  # type: ignore[arg-type]
    assert json.loads(want)[5] == m


def change(count: int, previous: int) -> CountChange:
    return CountChange((("p", "asset", "a1", "buy"), "base", 0.5), "Asset 1", count, previous,
                       0.75 if count else 0.0, version=42)


def test_the_change_value_carries_as_of_and_version() -> None:
    assert orjson.loads(change_payload(change(3, 2), 1_000, 900)) == {
        "program_id": "p", "segment_type": "base", "segment_basis": "asset",
        "segment_basis_id": "a1", "action_type": "buy", "name": "Asset 1", "min_weight": 0.5,
        "user_count": 3, "previous_user_count": 2, "strength": 0.75, "ts": 1_000,
        "as_of": 900, "version": 42}


def test_the_count_value_is_the_current_count_and_a_tombstone_at_zero() -> None:
    assert orjson.loads(count_payload(change(3, 2), 900) or b"") == {
        "program_id": "p", "segment_type": "base", "segment_basis": "asset",
        "segment_basis_id": "a1", "action_type": "buy", "name": "Asset 1", "min_weight": 0.5,
        "user_count": 3, "strength": 0.75, "as_of": 900, "version": 42}
    assert count_payload(change(0, 3), 900) is None
