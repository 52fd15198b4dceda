"""The record key of a segment family: the repartition topic's key, and what a producer may key
input records by to skip the repartition hop (docs/CONTRACT.md, notes)."""

from __future__ import annotations

from streams.codec.exact import encode_exact
from streams.domain.events import FamilyKey


def family_key(family: FamilyKey) -> bytes:
    """``["<program_id>","<segment_basis>","<basis_id>","<action_type>"]`` in compact UTF-8 JSON:
    every user of a segment family lands on the partition this key hashes to."""
    return encode_exact(family)
