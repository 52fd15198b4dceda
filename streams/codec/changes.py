"""The two outputs of the change publisher (contract §4 and §4b), both keyed by the segment key.

Key: ``["<program_id>","<segment_type>","<segment_basis>","<segment_basis_id>","<action_type>",
<min_weight>]``, compact UTF-8 JSON (what ``json.dumps(..., separators=(",", ":"),
ensure_ascii=False)`` writes), so every change of one segment at one threshold lands on one
partition, in order.

``segment-count-changes`` values: the change, with ``ts`` (when it was published), ``as_of`` (the
greatest event ``ts`` applied on its partition when it was computed) and ``version``.
``segment-counts`` values: the current count with ``as_of`` and ``version``; a tombstone (None)
when the segment has no member at that threshold.
"""

from __future__ import annotations

from streams.codec.exact import encode_exact
from streams.domain.family import SegmentKey
from streams.domain.ledger import CountChange


def segment_key(key: SegmentKey) -> bytes:
    (program_id, basis, basis_id, action_type), segment_type, min_weight = key
    return encode_exact([program_id, segment_type, basis, basis_id, action_type, min_weight])


# Payloads are encoded exact-size (encode_exact: what orjson writes for these values, whose
# floats are in [0, 1]): a tick publishes a change per moved segment, each held until the
# broker acknowledges it, and orjson's bytes hold its 4 KiB working buffer.
def change_payload(change: CountChange, now_ms: int, as_of: int) -> bytes:
    return encode_exact({
        "program_id": change.program_id, "segment_type": change.segment_type,
        "segment_basis": change.segment_basis, "segment_basis_id": change.segment_basis_id,
        "action_type": change.action_type, "name": change.name,
        "min_weight": change.min_weight, "user_count": change.user_count,
        "previous_user_count": change.previous_user_count, "strength": change.strength,
        "ts": now_ms, "as_of": as_of, "version": change.version,
    })


def count_payload(change: CountChange, as_of: int) -> bytes | None:
    """The segment's current count; None (a tombstone) when it has no member."""
    if change.user_count == 0:
        return None
    return encode_exact({
        "program_id": change.program_id, "segment_type": change.segment_type,
        "segment_basis": change.segment_basis, "segment_basis_id": change.segment_basis_id,
        "action_type": change.action_type, "name": change.name,
        "min_weight": change.min_weight, "user_count": change.user_count,
        "strength": change.strength, "as_of": as_of, "version": change.version,
    })
