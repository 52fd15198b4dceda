"""The repartition topic's compact form of an event: a JSON array of its fields, in order, then
the Kafka timestamp of the input record it came from (for the freshness metric; records
written before it was added end at ``ts``)."""

from __future__ import annotations

from typing import Annotated

import msgspec
import orjson

from streams.domain.events import INT64, Event
from streams.domain.exceptions import InvalidEvent


class _Wire(Event, array_like=True, gc=False):
    """Event's fields as an array, and the input record's timestamp."""

    record_ts: Annotated[int, INT64] | None = None


_decoder = msgspec.json.Decoder(_Wire)


def encode_event(ev: Event, record_ts: int) -> bytes:
    return orjson.dumps([ev.program_id, ev.user_id, ev.segment_basis, ev.basis_id, ev.name,
                         ev.action_type, ev.weight, ev.in_history, ev.ts, record_ts])


def decode_event(raw: bytes) -> tuple[Event, int | None]:
    """An event of the repartition topic, checked like an input event (it is a topic anybody
    could write to), and its input record's timestamp; raises InvalidEvent."""
    try:
        ev: _Wire = _decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise InvalidEvent(str(exc)) from None
    except RecursionError:
        raise InvalidEvent("nested too deeply") from None
    return ev, ev.record_ts
