"""The repartition topic's compact form of an event: a JSON array of its fields, in order, then
the Kafka timestamp of the input record it came from (for the freshness metric), then that
record's partition and offset (its position: codec/position.py). Records written before the
position was added end at the timestamp, and before the timestamp at ``ts``."""

from __future__ import annotations

from typing import Annotated

import msgspec
import orjson

from streams.domain.events import INT64, Event
from streams.domain.exceptions import InvalidEvent


class _Wire(Event, array_like=True, gc=False):
    """Event's fields as an array, and the input record's timestamp, partition and offset."""

    record_ts: Annotated[int, INT64] | None = None
    source_partition: int | None = None
    source_offset: int | None = None


_decoder = msgspec.json.Decoder(_Wire)


def encode_event(ev: Event, record_ts: int, partition: int | None = None,
                 offset: int | None = None) -> bytes:
    """The compact form of ``ev``, read from ``offset`` of input ``partition`` (without them:
    the form of before the position, which is ordered by its repartition offset)."""
    if partition is None or offset is None:
        return orjson.dumps([ev.program_id, ev.user_id, ev.segment_basis, ev.basis_id, ev.name,
                             ev.action_type, ev.weight, ev.in_history, ev.ts, record_ts])
    return orjson.dumps([ev.program_id, ev.user_id, ev.segment_basis, ev.basis_id, ev.name,
                         ev.action_type, ev.weight, ev.in_history, ev.ts, record_ts, partition,
                         offset])


def decode_event(raw: bytes) -> tuple[Event, int | None, tuple[int, int] | None]:
    """An event of the repartition topic, checked like an input event (it is a topic anybody
    could write to), its input record's timestamp, and that record's (partition, offset), None
    for records written before they were carried; raises InvalidEvent. The caller checks the
    position's range (codec/position.py)."""
    try:
        ev: _Wire = _decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise InvalidEvent(str(exc)) from None
    except RecursionError:
        raise InvalidEvent("nested too deeply") from None
    partition, offset = ev.source_partition, ev.source_offset
    if partition is None:
        return ev, ev.record_ts, None
    if offset is None:
        raise InvalidEvent("a partition without an offset")
    return ev, ev.record_ts, (partition, offset)
