"""The records of the two changelog-backed tables.

``recommendations``: key ``[program_id, segment_basis, basis_id, action_type, user_id]``, value
``[weight, in_history, ts, offset, partition, name]``: one last-writer-wins record per
recommendation (the durable state; everything else is derived from it); a tombstone (no value)
once a withdrawal older than the watermark is forgotten (contract §2, aging). ``offset`` is the
position of the event's input record (codec/position.py: input partition and offset in one
integer), which orders events of equal ``ts``; values written before positions were introduced
hold the offset the event was applied at (of the input or of the repartition topic).
``partition`` is the changelog partition the record belongs to.

``emitted-counts``: key ``[program_id, segment_basis, basis_id, action_type, segment_type,
threshold]``, value ``[count, partition]`` once a change is published, ``[count, partition,
previous]`` while it is about to be (domain/ledger.py); a tombstone once a count of 0 is
published. Each carries a header ``expected-offset``: the offset its writer expected it to get
(-1 when it did not know). A record elsewhere was written by an owner that did not know every
record before it (one paused past its session, whose writes landed after the next owner's):
the rebuilds do not take it for the segment's last published count (domain/ledger.py).

Decoding checks every field (types, ranges, arity, the partition the record belongs to) and
raises MalformedRecord for anything else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta

from streams.codec.exact import encode_exact
from streams.codec.exceptions import MalformedRecord
from streams.domain.events import INT64, Event, FamilyKey
from streams.domain.family import SegmentKey

_COUNT = Meta(ge=0, le=(1 << 63) - 1)
_Program = Annotated[str, Meta(min_length=1, max_length=128)]
_Basis = Literal["label", "asset"]
_BasisId = Annotated[str, Meta(min_length=1, max_length=256)]
_Action = Annotated[str, Meta(min_length=1, max_length=64)]


class RecommendationKey(msgspec.Struct, array_like=True, forbid_unknown_fields=True, gc=False):
    program_id: _Program
    segment_basis: _Basis
    basis_id: _BasisId
    action_type: _Action
    user_id: Annotated[str, Meta(min_length=1, max_length=256)]

    @property
    def family(self) -> FamilyKey:
        return (self.program_id, self.segment_basis, self.basis_id, self.action_type)


class RecommendationValue(msgspec.Struct, array_like=True, forbid_unknown_fields=True,
                          gc=False):
    weight: Annotated[float, Meta(ge=0, le=1)] | None
    in_history: bool
    ts: Annotated[int, INT64]
    offset: Annotated[int, _COUNT]
    partition: Annotated[int, _COUNT]
    name: Annotated[str, Meta(max_length=512)]


class _EmittedKey(msgspec.Struct, array_like=True, forbid_unknown_fields=True, gc=False):
    program_id: _Program
    segment_basis: _Basis
    basis_id: _BasisId
    action_type: _Action
    segment_type: Literal["growth", "base", "discovery"]
    threshold: Annotated[float, Meta(ge=0, le=1)]


class _EmittedValue(msgspec.Struct, array_like=True, forbid_unknown_fields=True, gc=False):
    count: Annotated[int, _COUNT]
    partition: Annotated[int, _COUNT]
    previous: Annotated[int, _COUNT] | None = None


_recommendation_key = msgspec.json.Decoder(RecommendationKey)
_recommendation_value = msgspec.json.Decoder(RecommendationValue)
_emitted_key = msgspec.json.Decoder(_EmittedKey)
_emitted_value = msgspec.json.Decoder(_EmittedValue)


def recommendation_key(family: FamilyKey, user_id: str) -> bytes:
    """Key of one recommendation (exact size: a batch holds thousands)."""
    return encode_exact([*family, user_id])


def encode_applied(ev: Event, position: int, partition: int) -> bytes:
    """Value of the recommendation an event at input ``position`` stored on ``partition``."""
    return encode_exact([ev.weight, ev.in_history, ev.ts, position, partition, ev.name])


def encode_recommendation(weight: float | None, in_history: bool, ts: int, offset: int,
                          partition: int, name: str) -> bytes:
    return encode_exact([weight, in_history, ts, offset, partition, name])


def decode_recommendation(key: bytes, value: bytes, partition: int
                          ) -> tuple[RecommendationKey, RecommendationValue]:
    """A recommendations record of changelog partition ``partition``."""
    return _decode(_recommendation_key, _recommendation_value, key, value, partition)


def decode_recommendation_key(key: bytes) -> RecommendationKey:
    """The key of a recommendations tombstone (a forgotten recommendation: no value)."""
    try:
        return _recommendation_key.decode(key)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MalformedRecord(str(exc)) from None


def emitted_key(key: SegmentKey) -> bytes:
    family, segment_type, threshold = key
    return encode_exact([*family, segment_type, threshold])


def encode_emitted(count: int, partition: int, previous: int | None = None) -> bytes:
    """``[count, partition]``, or for an intent ``[count, partition, previous]``."""
    return encode_exact([count, partition] if previous is None else [count, partition, previous])


EXPECTED_OFFSET = "expected-offset"  # header of every emitted-counts record
# A record's headers, as aiokafka (a sequence) or Faust (either) hands them over.
RecordHeaders = Sequence[tuple[str, bytes]] | Mapping[str, bytes]
_UNKNOWN_OFFSET = [(EXPECTED_OFFSET, b"-1")]


def expected_offset_header(offset: int | None) -> list[tuple[str, bytes]]:
    """The headers of an emitted-counts record its writer expects at ``offset`` (None: not
    known). A list each: aiokafka's record builder takes no other sequence."""
    return list(_UNKNOWN_OFFSET) if offset is None else [(EXPECTED_OFFSET, b"%d" % offset)]


def decode_expected_offset(headers: RecordHeaders | None) -> int | None:
    """The offset the writer of an emitted-counts record expected it at (-1: it did not know);
    None for a record without the header (written before it was introduced)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, value in pairs:
        if name == EXPECTED_OFFSET:
            try:
                if isinstance(value, bytes) and 0 < len(value) <= 20:
                    return int(value)
            except ValueError:
                pass
            raise MalformedRecord(f"header {EXPECTED_OFFSET}: {value!r}")
    return None


def decode_emitted_key(key: bytes) -> SegmentKey:
    """The key of an emitted-counts tombstone (a segment last published at 0)."""
    try:
        k = _emitted_key.decode(key)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MalformedRecord(str(exc)) from None
    return (k.program_id, k.segment_basis, k.basis_id, k.action_type), k.segment_type, k.threshold


def decode_emitted(key: bytes, value: bytes, partition: int
                   ) -> tuple[SegmentKey, int, int | None]:
    """An emitted-counts record of changelog partition ``partition``: (segment key, count,
    previous count of an intent or None)."""
    k, v = _decode(_emitted_key, _emitted_value, key, value, partition)
    family = (k.program_id, k.segment_basis, k.basis_id, k.action_type)
    return (family, k.segment_type, k.threshold), v.count, v.previous


_K = TypeVar("_K")
_V = TypeVar("_V", RecommendationValue, _EmittedValue)


def _decode(keys: msgspec.json.Decoder[_K], values: msgspec.json.Decoder[_V], key: bytes,
            value: bytes, partition: int) -> tuple[_K, _V]:
    """A record's key and value, checked to belong to changelog partition ``partition``."""
    try:
        k = keys.decode(key)
        v = values.decode(value)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MalformedRecord(str(exc)) from None
    if v.partition != partition:
        raise MalformedRecord(f"a record of partition {v.partition}")
    return k, v
