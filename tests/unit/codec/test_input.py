"""Input validation against the contract, section 1: what is a valid recommendation-weight
event, what each valid one becomes, and that everything else is refused with a reason."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec.input import DEFAULT_MAX_FUTURE_MS, parse_event
from streams.codec.wire import decode_event, encode_event
from streams.domain.events import Event
from streams.domain.exceptions import InvalidEvent

RECORD_TS = 1_764_450_000_000

GOOD: dict[str, Any] = {
    "program_id": "p1", "user_id": "u1", "segment_basis": "label", "basis_id": "l1",
    "name": "Label one", "action_type": "view", "weight": 0.25, "in_history": True,
    "ts": 1_764_400_000_000,
}


def fields(ev: Event) -> dict[str, Any]:
    return msgspec.structs.asdict(ev)


def with_(**changes: Any) -> bytes:
    doc = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in doc.items() if v is not ...})


def test_a_full_event() -> None:
    ev = parse_event(orjson.dumps(GOOD), RECORD_TS)
    assert fields(ev) == fields(Event("p1", "u1", "label", "l1", "Label one", "view", 0.25,
                                      True, 1_764_400_000_000))


def test_defaults_name_is_basis_id_and_ts_is_the_record_timestamp() -> None:
    ev = parse_event(with_(name=..., ts=...), RECORD_TS)
    assert (ev.name, ev.ts) == ("l1", RECORD_TS)
    ev = parse_event(with_(name=None, ts=None), RECORD_TS)
    assert (ev.name, ev.ts) == ("l1", RECORD_TS)


@pytest.mark.parametrize("raw, expected", [
    (with_(weight=1), 1.0), (with_(weight=0), 0.0), (with_(weight=None), None),
    (with_(weight=1e-300), 1e-300), (b'{"weight": 0.5e0, ' + with_(weight=...)[1:], 0.5),
])
def test_weights(raw: bytes, expected: float | None) -> None:
    ev = parse_event(raw, RECORD_TS)
    assert ev.weight == expected
    assert ev.weight is None or type(ev.weight) is float


def test_other_fields_are_ignored_and_the_last_duplicate_wins() -> None:
    ev = parse_event(b'{"extra": [1, {"x": null}], "weight": 0.9, ' + with_()[1:], RECORD_TS)
    assert ev.weight == 0.25  # the later "weight" of the object
    assert ev.user_id == "u1"


def test_unicode_lengths_count_characters() -> None:
    assert parse_event(with_(program_id="é" * 128), RECORD_TS).program_id == "é" * 128
    assert parse_event(with_(name=""), RECORD_TS).name == ""
    assert parse_event(with_(user_id="\U0001f600" * 256), RECORD_TS).user_id


@pytest.mark.parametrize("raw, reason", [
    (None, "null record value"),
    (b"", "JSON"),
    (b"not json", "JSON"),
    (b"[1, 2]", "object"),
    (b"null", "object"),
    (b'"text"', "object"),
    (with_()[:-1], "JSON"),  # truncated
    (with_() + b" x", "JSON"),  # trailing data
    (with_(program_id=...), "program_id"),
    (with_(user_id=""), "user_id"),
    (with_(program_id="p" * 129), "program_id"),
    (with_(user_id="u" * 257), "user_id"),
    (with_(basis_id="b" * 257), "basis_id"),
    (with_(name="n" * 513), "name"),
    (with_(action_type="a" * 65), "action_type"),
    (with_(action_type=""), "action_type"),
    (with_(segment_basis="labels"), "segment_basis"),
    (with_(segment_basis=None), "segment_basis"),
    (with_(weight=...), "weight"),
    (with_(weight=1.0000001), "weight"),
    (with_(weight=-0.1), "weight"),
    (with_(weight=True), "weight"),
    (with_(weight="0.5"), "weight"),
    (with_(in_history=1), "in_history"),
    (with_(in_history="true"), "in_history"),
    (with_(in_history=None), "in_history"),
    (with_(ts=1.0), "ts"),
    (with_(ts="1764400000000"), "ts"),
    (with_(ts=True), "ts"),
    (with_(program_id=5), "program_id"),
    (with_(name=5), "name"),
    (with_(weight=...)[:-1] + b',"weight":NaN}', "JSON"),
    (with_(weight=...)[:-1] + b',"weight":Infinity}', "JSON"),
    (with_(weight=...)[:-1] + b',"weight":1e400}', "weight"),
    (with_(ts=...)[:-1] + b',"ts":99999999999999999999}', "ts"),
    (with_(user_id=...)[:-1] + b',"user_id":"\\ud800"}', ""),  # lone surrogate
    (with_(user_id="u\xff").replace("u\xff".encode(), b"u\xff"), ""),  # invalid UTF-8
    (b'{"deep": ' + b"[" * 100_000 + b"]" * 100_000 + b", " + with_()[1:], "nested"),
    (b"[" * 100_000 + b"]" * 100_000, ""),
])
def test_invalid_events_are_refused_with_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as err:
        parse_event(raw, RECORD_TS)
    assert err.value.reason.strip()
    assert reason in err.value.reason


def test_ts_at_most_the_allowed_time_after_the_record_timestamp() -> None:
    limit = RECORD_TS + DEFAULT_MAX_FUTURE_MS
    assert parse_event(with_(ts=limit), RECORD_TS).ts == limit
    with pytest.raises(InvalidEvent) as err:
        parse_event(with_(ts=limit + 1), RECORD_TS)
    assert "$.ts" in err.value.reason and "milliseconds" in err.value.reason
    assert parse_event(with_(ts=RECORD_TS + 10), RECORD_TS, max_future_ms=10).ts == RECORD_TS + 10
    with pytest.raises(InvalidEvent):
        parse_event(with_(ts=RECORD_TS + 11), RECORD_TS, max_future_ms=10)


def test_a_microsecond_ts_is_refused() -> None:
    """It would look newer than every later millisecond event: its recommendation would be
    frozen forever."""
    with pytest.raises(InvalidEvent):
        parse_event(with_(ts=RECORD_TS * 1000), RECORD_TS)


def test_a_record_without_timestamp_does_not_bound_ts() -> None:
    assert parse_event(with_(ts=2**62), -1).ts == 2**62


_text = st.text(min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(program_id=_text, user_id=_text, basis=st.sampled_from(["label", "asset"]),
       basis_id=_text, name=st.none() | st.text(max_size=40), action=_text,
       weight=st.none() | st.floats(0, 1) | st.integers(0, 1), in_history=st.booleans(),
       ts=st.none() | st.integers(-(2**63), RECORD_TS + DEFAULT_MAX_FUTURE_MS))
def test_any_valid_event_is_accepted_as_is(program_id: str, user_id: str, basis: str,
                                           basis_id: str, name: str | None, action: str,
                                           weight: float | None, in_history: bool,
                                           ts: int | None) -> None:
    doc = {"program_id": program_id, "user_id": user_id, "segment_basis": basis,
           "basis_id": basis_id, "name": name, "action_type": action, "weight": weight,
           "in_history": in_history, "ts": ts}
    try:
        raw = orjson.dumps(doc)
    except orjson.JSONEncodeError:  # a lone surrogate: not valid UTF-8 JSON at all
        return
    ev = parse_event(raw, RECORD_TS)
    assert ev.family == (program_id, basis, basis_id, action)
    assert ev.user_id == user_id
    assert ev.name == (basis_id if name is None else name)
    assert ev.ts == (RECORD_TS if ts is None else ts)
    assert ev.in_history is in_history
    if weight is None:
        assert ev.weight is None
    else:
        assert ev.weight == weight and not math.isnan(ev.weight)
    # The repartition form carries the same event, and the input record's timestamp,
    # partition and offset.
    decoded, record_ts, source = decode_event(encode_event(ev, RECORD_TS, 3, 1 << 46))
    extra = ("record_ts", "source_partition", "source_offset")
    assert {k: v for k, v in fields(decoded).items() if k not in extra} == fields(ev)
    assert (record_ts, source) == (RECORD_TS, (3, 1 << 46))


def test_repartition_records_of_before_the_position_still_decode() -> None:
    ev, record_ts, source = decode_event(b'["p","u","label","b","n","a",0.5,true,17]')
    assert (ev.ts, record_ts, source) == (17, None, None)
    ev, record_ts, source = decode_event(b'["p","u","label","b","n","a",0.5,true,17,18]')
    assert (ev.ts, record_ts, source) == (17, 18, None)


def test_repartition_records_are_checked_too() -> None:
    with pytest.raises(InvalidEvent):
        decode_event(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(InvalidEvent):
        decode_event(b'["p","u","label","b","n","a",0.5,true,"not an int"]')
    with pytest.raises(InvalidEvent):  # a partition without its offset
        decode_event(b'["p","u","label","b","n","a",0.5,true,17,18,2]')
    with pytest.raises(InvalidEvent):
        decode_event(b'["p","u","label","b","n","a",0.5,true,17,18,2,"5"]')
