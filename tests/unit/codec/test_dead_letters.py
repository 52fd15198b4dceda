"""Dead letters (contract section 1): any record Kafka accepts has one that fits the producer's
limit, keeps as much of the original as fits, and says what was cut."""

from __future__ import annotations

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec.dead_letters import (
    ERROR_MAX_BYTES,
    MIN_DEAD_LETTER_BYTES,
    dead_letter,
    error_text,
    record_size,
)

LIMIT = 1_000_000  # Faust's producer_max_request_size
SOURCE = ("recommendation-weights", 3, 1234)


def headers(letter) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return dict(letter.headers)


def test_an_invalid_record_keeps_its_key_and_bytes() -> None:
    letter = dead_letter(b"key", b"not json", "not valid JSON", max_bytes=LIMIT, source=SOURCE)
    assert (letter.key, letter.value) == (b"key", b"not json")
    assert headers(letter) == {"error": b"not valid JSON",
                               "source-topic": b"recommendation-weights",
                               "source-partition": b"3", "source-offset": b"1234"}


def test_a_null_value_becomes_an_empty_one_with_a_header() -> None:
    for key in (None, b"k"):
        letter = dead_letter(key, None, "null record value", max_bytes=LIMIT)
        assert letter.key == key and letter.value == b""
        assert headers(letter)["null-value"] == b"true"


def test_the_error_header_is_at_most_1_kib_and_valid_utf8() -> None:
    reason = "Invalid enum value '" + "é" * 300_000 + "' - at `$.segment_basis`"
    text = error_text(reason).decode("utf-8")
    assert len(text.encode()) <= ERROR_MAX_BYTES
    assert text.startswith("Invalid enum value 'éé") and "..." in text
    assert text.endswith("' - at `$.segment_basis`")  # where the problem is stays in
    assert error_text("short") == b"short"


def test_a_value_that_does_not_fit_is_cut_to_a_prefix() -> None:
    value = b"x" * 1_020_000
    letter = dead_letter(b"key", value, "not valid JSON", max_bytes=LIMIT)
    h = headers(letter)
    assert h["truncated"] == b"true" and h["original-size"] == b"1020000"
    assert "key-truncated" not in h and letter.key == b"key"
    assert value.startswith(letter.value) and len(letter.value) > LIMIT - 2000
    assert letter.size() <= LIMIT


def test_a_key_that_does_not_fit_is_cut_too() -> None:
    letter = dead_letter(b"k" * 1_000_000, b"v", "bad", max_bytes=LIMIT)
    h = headers(letter)
    assert h["key-truncated"] == b"true" and h["original-key-size"] == b"1000000"
    assert letter.value == b"v" and "truncated" not in h
    assert letter.size() <= LIMIT


@settings(max_examples=300, deadline=None)
@given(key=st.none() | st.binary(max_size=3000), value=st.none() | st.binary(max_size=3000),
       reason=st.text(max_size=3000),
       max_bytes=st.integers(MIN_DEAD_LETTER_BYTES, 6000),
       source=st.none() | st.tuples(st.text(min_size=1, max_size=249),
                                    st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1)))
def test_every_dead_letter_fits_and_keeps_prefixes(key: bytes | None, value: bytes | None,
                                                  reason: str, max_bytes: int,
                                                  source: tuple[str, int, int] | None) -> None:
    letter = dead_letter(key, value, reason, max_bytes=max_bytes, source=source)
    h = headers(letter)
    # aiokafka's own estimate (what its producer checks against max_request_size) is within ours
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(
        letter.key, letter.value, list(letter.headers)) <= letter.size() <= max_bytes
    assert (value or b"").startswith(letter.value)
    assert (key is None) == (letter.key is None)
    assert (key or b"").startswith(letter.key or b"")
    assert ("truncated" in h) == (len(letter.value) < len(value or b""))
    assert ("key-truncated" in h) == (len(letter.key or b"") < len(key or b""))
    assert len(h["error"]) <= ERROR_MAX_BYTES


def test_record_size_is_an_upper_bound_of_aiokafkas_estimate() -> None:
    for key, value, hdrs in [(None, None, ()), (b"k" * 200, b"v" * 70_000, (("h", b"x"),)),
                             (b"", b"", (("error", b"e" * 1024),) * 8)]:
        assert DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(hdrs)) <= (
            record_size(key, value, hdrs))
