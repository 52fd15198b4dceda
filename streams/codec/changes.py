"""Count-change events (contract section 4): JSON values keyed by program_id."""

from __future__ import annotations

import orjson

from streams.domain.ledger import CountChange


def change_key(change: CountChange) -> bytes:
    return change.program_id.encode()


def change_payload(change: CountChange, now_ms: int) -> bytes:
    return orjson.dumps({
        "program_id": change.program_id, "segment_type": change.segment_type,
        "segment_basis": change.segment_basis, "segment_basis_id": change.segment_basis_id,
        "action_type": change.action_type, "name": change.name,
        "min_weight": change.min_weight, "user_count": change.user_count,
        "previous_user_count": change.previous_user_count, "strength": change.strength,
        "ts": now_ms,
    })
