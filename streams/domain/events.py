"""Recommendation-weight events (contract sections 1 and 2) and the segment family they belong to.

An ``Event`` carries the contract's value rules as constraints (string lengths, the weight in
[0, 1], a 64-bit ``ts``): ``streams.codec`` decodes input records against them, so an Event that
exists is valid, with ``name`` and ``ts`` resolved.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

SegmentBasis = Literal["label", "asset"]
SegmentType = Literal["growth", "base", "discovery"]
SEGMENT_TYPES: Final[tuple[SegmentType, ...]] = ("growth", "base", "discovery")

# (program_id, segment_basis, basis_id, action_type): every user of a segment family, in its
# growth, base and discovery segments, lives on one partition.
FamilyKey = tuple[str, str, str, str]

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
INT64 = Meta(ge=INT64_MIN, le=INT64_MAX)  # ts is stored as a signed 64-bit integer


class Event(msgspec.Struct, gc=False):
    """A valid recommendation-weight event.

    ``gc=False``: the struct holds only strings, numbers and booleans (no reference cycles),
    so the garbage collector never needs to track it."""

    program_id: Annotated[str, Meta(min_length=1, max_length=128)]
    user_id: Annotated[str, Meta(min_length=1, max_length=256)]
    segment_basis: SegmentBasis
    basis_id: Annotated[str, Meta(min_length=1, max_length=256)]
    name: Annotated[str, Meta(max_length=512)]
    action_type: Annotated[str, Meta(min_length=1, max_length=64)]
    weight: Annotated[float, Meta(ge=0, le=1)] | None
    in_history: bool
    ts: Annotated[int, INT64]

    @property
    def family(self) -> FamilyKey:
        """(program_id, segment_basis, basis_id, action_type): the segment family."""
        return (self.program_id, self.segment_basis, self.basis_id, self.action_type)
