"""Input records (contract section 1): one JSON object per record value, validated in one pass
over its bytes by a compiled msgspec decoder.

Its rules are the contract's: no coercion (a number is not a string, a boolean is not a
number), integers accepted where a number is, unknown fields ignored, the last of duplicated
keys wins, NaN/Infinity and numbers out of the double range rejected, invalid UTF-8 (lone
surrogates included) rejected; and a ``ts`` more than ``max_future_ms`` after the record's own
timestamp refused (a ts in the wrong unit would freeze its recommendation forever; the
record's timestamp, not a clock, keeps replays deterministic).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import orjson
from msgspec import Meta

from streams.domain.events import INT64, Event
from streams.domain.exceptions import InvalidEvent

DEFAULT_MAX_FUTURE_MS = 3_600_000


class _Input(Event, kw_only=True, gc=False):
    """The input record's schema: ``name`` and ``ts`` may be missing."""

    name: Annotated[str, Meta(max_length=512)] | None = None  # type: ignore[assignment]
    ts: Annotated[int, INT64] | None = None  # type: ignore[assignment]


_decoder = msgspec.json.Decoder(_Input)


def parse_event(raw: bytes | None, record_ts_ms: int,
                max_future_ms: int = DEFAULT_MAX_FUTURE_MS) -> Event:
    """One input record value as a valid Event (``name`` and ``ts`` resolved); raises
    InvalidEvent with a human-readable reason naming the place of the problem. A record
    without a timestamp (negative) puts no bound on ``ts``."""
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
    return ev


def encode_input(ev: Event) -> bytes:
    """An event as an input record value (contract section 1), ``name`` and ``ts`` resolved."""
    return orjson.dumps({"program_id": ev.program_id, "user_id": ev.user_id,
                         "segment_basis": ev.segment_basis, "basis_id": ev.basis_id,
                         "name": ev.name, "action_type": ev.action_type, "weight": ev.weight,
                         "in_history": ev.in_history, "ts": ev.ts})
