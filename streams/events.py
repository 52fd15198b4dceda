"""Recommendation-weight events: validation of input records (contract section 1) and the
compact form they travel in between the ingest and aggregate agents.

Input records are validated in one pass over their bytes by a compiled msgspec decoder:
~0.4 us per event, against ~5 us for ``orjson.loads`` followed by a strict pydantic model
(BENCHMARKS.md). Its rules are the contract's: no coercion (a number is not a string, a
boolean is not a number), integers accepted where a number is, unknown fields ignored,
the last of duplicated keys wins, NaN/Infinity and numbers out of the double range
rejected, invalid UTF-8 (lone surrogates included) rejected.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import orjson
from msgspec import Meta

from streams.exceptions import InvalidEvent

SegmentBasis = Literal["label", "asset"]

DEFAULT_MAX_FUTURE_MS = 3_600_000

# ts is kept in the durable records, which store integers of at most 64 bits.
_INT64 = Meta(ge=-(1 << 63), le=(1 << 63) - 1)


class Event(msgspec.Struct, gc=False):
    """A recommendation-weight event. Decoded from an input record it is checked against the
    contract's schema; :func:`parse_event` then resolves ``name`` and ``ts``, so that a
    valid event has ``name`` and ``ts`` set and ``weight`` a float or None.

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
    ts: Annotated[int, _INT64]

    @property
    def family(self) -> tuple[str, str, str, str]:
        """(program_id, segment_basis, basis_id, action_type): the segment family."""
        return (self.program_id, self.segment_basis, self.basis_id, self.action_type)

    def encode(self) -> bytes:
        """The compact form sent on the repartition topic."""
        return orjson.dumps([self.program_id, self.user_id, self.segment_basis, self.basis_id,
                             self.name, self.action_type, self.weight, self.in_history, self.ts])

    @staticmethod
    def decode(raw: bytes) -> Event:
        """An event of the repartition topic, checked like an input event (it is a topic
        anybody could write to); raises InvalidEvent."""
        try:
            ev: Event = _wire_decoder.decode(raw)
        except msgspec.DecodeError as exc:  # ValidationError included
            raise InvalidEvent(str(exc)) from None
        except RecursionError:
            raise InvalidEvent("nested too deeply") from None
        return ev


class _Input(Event, kw_only=True, gc=False):
    """The input record's schema: ``name`` and ``ts`` may be missing."""

    name: Annotated[str, Meta(max_length=512)] | None = None  # type: ignore[assignment]
    ts: Annotated[int, _INT64] | None = None  # type: ignore[assignment]


class _Wire(Event, array_like=True, gc=False):
    """The repartition topic's form: a JSON array of Event's fields, in order."""


_decoder = msgspec.json.Decoder(_Input)
_wire_decoder = msgspec.json.Decoder(_Wire)


# Kept keys and durable values are encoded by msgspec: byte for byte what orjson.dumps writes
# for them (strings, booleans, ints and floats below 1e16; a unit test compares), but in a
# bytes object of the exact size, where orjson's holds its 4 KiB working buffer.
encode_exact = msgspec.json.Encoder().encode


def family_key(program_id: str, segment_basis: str, basis_id: str, action_type: str) -> bytes:
    """Partitioning key: every user of a segment family lands on one partition."""
    return encode_exact([program_id, segment_basis, basis_id, action_type])


def kept(dumped: bytes) -> bytes:
    """An exact-size copy of ``orjson.dumps`` output, for bytes that are kept (dict keys).

    orjson hands back its working buffer as the bytes object: 4 KiB whatever the length
    (orjson >= 3.12; 1 KiB before). Keys kept by the million from it held 4 KiB each; the
    copy costs a few tens of nanoseconds.
    """
    return memoryview(dumped).tobytes()


def parse_event(raw: bytes | None, record_ts_ms: int,
                max_future_ms: int = DEFAULT_MAX_FUTURE_MS) -> Event:
    """Validate one input record value; raise InvalidEvent with a human-readable reason.

    A ``ts`` more than ``max_future_ms`` after the record's own timestamp is refused (a ts in
    the wrong unit would otherwise freeze its recommendation forever); the record's
    timestamp, not a clock, keeps replays deterministic. A record without a timestamp
    (negative) is not checked."""
    if raw is None:
        raise InvalidEvent("null record value")
    try:
        ev: _Input = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    except RecursionError:  # msgspec skips unknown fields recursively
        raise InvalidEvent("nested too deeply") from None
    if ev.name is None:
        ev.name = ev.basis_id
    if ev.ts is None:
        ev.ts = record_ts_ms
    elif record_ts_ms >= 0 and ev.ts - record_ts_ms > max_future_ms:
        raise InvalidEvent(
            f"ts {ev.ts} is more than {max_future_ms} ms after the record's timestamp "
            f"{record_ts_ms} (ts must be epoch milliseconds) - at `$.ts`")
    return ev  # name and ts are set now
