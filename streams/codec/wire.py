"""The repartition topic's compact form of an event: a JSON array of its fields, in order."""

from __future__ import annotations

import msgspec
import orjson

from streams.domain.events import Event
from streams.domain.exceptions import InvalidEvent


class _Wire(Event, array_like=True, gc=False):
    """Event's fields as an array."""


_decoder = msgspec.json.Decoder(_Wire)


def encode_event(ev: Event) -> bytes:
    return orjson.dumps([ev.program_id, ev.user_id, ev.segment_basis, ev.basis_id, ev.name,
                         ev.action_type, ev.weight, ev.in_history, ev.ts])


def decode_event(raw: bytes) -> Event:
    """An event of the repartition topic, checked like an input event (it is a topic anybody
    could write to); raises InvalidEvent."""
    try:
        ev: Event = _decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise InvalidEvent(str(exc)) from None
    except RecursionError:
        raise InvalidEvent("nested too deeply") from None
    return ev
