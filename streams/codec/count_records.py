"""Reading `segment-counts` records as a consumer does (contract section 4b): the segment key
and the count value, checked against the rules of schemas/count.json (a record that breaks them
raises MalformedRecord; a reader skips it)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from streams.codec.exceptions import MalformedRecord
from streams.domain.events import INT64, SegmentBasis, SegmentType

ProgramId = Annotated[str, Meta(min_length=1, max_length=128)]
BasisId = Annotated[str, Meta(min_length=1, max_length=256)]
ActionType = Annotated[str, Meta(min_length=1, max_length=64)]
Threshold = Annotated[float, Meta(ge=0, le=1)]

# [program_id, segment_type, segment_basis, segment_basis_id, action_type, min_weight]
SegmentKey = tuple[ProgramId, SegmentType, SegmentBasis, BasisId, ActionType, Threshold]


class CountValue(msgspec.Struct, frozen=True):
    """A segment's current count at a watched threshold (schemas/count.json; a reader ignores
    fields it does not know, so that a later version's records still read)."""

    program_id: ProgramId
    segment_type: SegmentType
    segment_basis: SegmentBasis
    segment_basis_id: BasisId
    action_type: ActionType
    name: Annotated[str, Meta(max_length=512)]
    min_weight: Threshold
    user_count: Annotated[int, Meta(ge=1)]
    strength: Threshold
    as_of: Annotated[int, INT64]
    version: Annotated[int, Meta(ge=0)]

    @property
    def key(self) -> SegmentKey:
        return (self.program_id, self.segment_type, self.segment_basis, self.segment_basis_id,
                self.action_type, self.min_weight)


_key_decoder = msgspec.json.Decoder(SegmentKey)
_value_decoder = msgspec.json.Decoder(CountValue)


def decode_segment_key(raw: bytes | None) -> SegmentKey:
    if raw is None:
        raise MalformedRecord("a segment-counts record without a key")
    try:
        return _key_decoder.decode(raw)
    except msgspec.DecodeError as exc:  # (ValidationError included)
        raise MalformedRecord(f"not a segment key: {exc}") from None


def decode_count_value(key: SegmentKey, raw: bytes) -> CountValue:
    """The value of a record keyed ``key``; a value naming another segment is malformed."""
    try:
        value = _value_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise MalformedRecord(f"not a count value: {exc}") from None
    if value.key != key:
        raise MalformedRecord(f"a count value of {list(value.key)} under the key {list(key)}")
    return value
