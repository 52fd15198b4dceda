"""The reference consumer's state (`segments watch`, contract section 4c): one program's
segments of one type and basis at one threshold, as `segment-counts` says they are now.

Table semantics, as a Kafka Streams KTable: the latest value per segment key, a tombstone
removes it. A record whose ``version`` (a tombstone's: its ``version`` header) is not greater
than the one held for its key is dropped (an at-least-once duplicate, or a fenced old owner's
late write). Pure: the caller feeds records (key, value and headers) and renders ``top``; no
Kafka, no terminal."""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from streams.codec.count_records import (
    CountValue,
    SegmentKey,
    decode_count_value,
    decode_segment_key,
)
from streams.codec.exceptions import MalformedRecord
from streams.domain.rows import SegmentRow, sort_key

# Versions of tombstoned keys remembered, so that an older value arriving after its tombstone
# is dropped; beyond this many the oldest are forgotten (the table stays bounded).
MAX_REMOVED_VERSIONS = 100_000


@dataclass(frozen=True, slots=True)
class WatchedRow:
    row: SegmentRow
    delta: int  # user_count minus the count its previous record held (0: first seen)
    version: int


def tombstone_version(headers: Sequence[tuple[str, bytes]]) -> int | None:
    """The ``version`` header of a tombstone (decimal ASCII); MalformedRecord when it is not
    a version."""
    for name, raw in headers:
        if name == "version":
            if not (raw.isdigit() and len(raw) <= 19):
                raise MalformedRecord(f"a tombstone's version header {raw[:32]!r}")
            return int(raw)
    return None


class CountsTable:
    def __init__(self, program_id: str, min_weight: float, segment_type: str = "growth",
                 segment_basis: str = "label",
                 max_removed_versions: int = MAX_REMOVED_VERSIONS) -> None:
        self.program_id = program_id
        self.min_weight = min_weight
        self.segment_type = segment_type
        self.segment_basis = segment_basis
        self._rows: dict[tuple[str, str], WatchedRow] = {}  # (basis_id, action_type) -> row
        self._removed: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._max_removed = max_removed_versions
        self.records = 0  # records read, of every segment
        self.skipped = 0  # records that are not segment-counts records
        self.dropped = 0  # records of this view not newer than what is held
        self.as_of: int | None = None  # the greatest as_of of this view's values

    def __len__(self) -> int:
        return len(self._rows)

    def _mine(self, key: SegmentKey) -> bool:
        return (key[0] == self.program_id and key[5] == self.min_weight
                and key[1] == self.segment_type and key[2] == self.segment_basis)

    def apply(self, key: bytes | None, value: bytes | None,
              headers: Sequence[tuple[str, bytes]] = ()) -> bool:
        """Apply one record of the topic, in partition order; whether this view changed."""
        self.records += 1
        try:
            segment = decode_segment_key(key)
            if not self._mine(segment):
                return False
            if value is None:
                return self._remove((segment[3], segment[4]), tombstone_version(headers))
            count = decode_count_value(segment, value)
        except MalformedRecord:
            self.skipped += 1
            return False
        return self._upsert((segment[3], segment[4]), count)

    def _remove(self, slot: tuple[str, str], version: int | None) -> bool:
        """A tombstone: the segment has no member at this threshold (``version``: None for a
        tombstone without one, applied as a KTable would)."""
        held = self._rows.get(slot)
        newest = held.version if held is not None else self._removed.get(slot)
        if version is not None and newest is not None and version <= newest:
            self.dropped += 1
            return False
        if held is not None:
            del self._rows[slot]
        if version is not None or newest is not None:
            self._forget_later(slot, max(v for v in (version, newest) if v is not None))
        return held is not None

    def _upsert(self, slot: tuple[str, str], count: CountValue) -> bool:
        held = self._rows.get(slot)
        newest = held.version if held is not None else self._removed.get(slot)
        if newest is not None and count.version <= newest:
            self.dropped += 1
            return False
        self._removed.pop(slot, None)
        row = SegmentRow(count.segment_type, count.segment_basis, count.segment_basis_id,
                         count.action_type, count.name, count.user_count, count.strength)
        delta = 0 if held is None else count.user_count - held.row.user_count
        self._rows[slot] = WatchedRow(row, delta, count.version)
        if self.as_of is None or count.as_of > self.as_of:
            self.as_of = count.as_of
        return True

    def _forget_later(self, slot: tuple[str, str], version: int) -> None:
        self._removed[slot] = version
        self._removed.move_to_end(slot)
        while len(self._removed) > self._max_removed:
            self._removed.popitem(last=False)

    def settle(self) -> None:
        """Forget how counts moved so far (at the end of the bootstrap: only moves seen live
        are news)."""
        for slot, held in self._rows.items():
            if held.delta:
                self._rows[slot] = WatchedRow(held.row, 0, held.version)

    def top(self, n: int) -> list[WatchedRow]:
        """The first ``n`` segments in the contract's order of `GET /segments`."""
        return heapq.nsmallest(n, self._rows.values(), key=lambda held: sort_key(held.row))
