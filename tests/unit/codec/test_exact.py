"""Keys the worker keeps are exact-size bytes, not orjson's 4 KiB working buffers, and the
same bytes orjson writes."""

from __future__ import annotations

import tracemalloc

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec.durable import emitted_key, encode_recommendation, recommendation_key
from streams.codec.keys import family_key


def _bytes_per_key(make: object) -> float:
    tracemalloc.start()
    try:
        keys = [make(i) for i in range(2000)]  # type: ignore[operator]
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(keys) == 2000
    return current / len(keys)


def test_kept_keys_are_exact_size_and_equal_to_orjson_output() -> None:
    fam = ("program-1", "label", "l1", "view")
    assert family_key(fam) == orjson.dumps(list(fam))
    assert emitted_key((fam, "growth", 0.5)) == orjson.dumps([*fam, "growth", 0.5])
    assert recommendation_key(fam, "u1") == orjson.dumps([*fam, "u1"])
    for make in (lambda i: family_key(("program-1", "label", f"l{i}", "view")),
                 lambda i: emitted_key((("program-1", "label", f"l{i}", "view"), "growth", 0.5)),
                 lambda i: recommendation_key(("program-1", "label", "l1", "view"), f"user-{i}")):
        # ~100 bytes of key and object header each (a plain orjson.dumps holds 4 KiB)
        assert _bytes_per_key(make) < 400


@settings(max_examples=500, deadline=None)
@given(family=st.tuples(st.text(min_size=1), st.sampled_from(["label", "asset"]),
                        st.text(min_size=1), st.text(min_size=1)),
       user=st.text(min_size=1), threshold=st.floats(0, 1),
       weight=st.none() | st.floats(0, 1), hist=st.booleans(),
       ts=st.integers(-(2**63), 2**63 - 1), offset=st.integers(0, 2**63 - 1),
       name=st.text())
def test_keys_and_values_are_orjson_bytes(family: tuple[str, str, str, str], user: str,
                                         threshold: float, weight: float | None, hist: bool,
                                         ts: int, offset: int, name: str) -> None:
    """Keys written before and after the switch to msgspec's encoder are the same bytes (the
    changelogs are compacted by key, and the emitted counts are looked up by key)."""
    try:
        expected = orjson.dumps([*family, user])
    except orjson.JSONEncodeError:  # lone surrogates: never valid input (not UTF-8)
        return
    assert recommendation_key(family, user) == expected
    assert family_key(family) == orjson.dumps(list(family))
    assert emitted_key((family, "base", threshold)) == orjson.dumps([*family, "base", threshold])
    try:
        value = orjson.dumps([weight, hist, ts, offset, 7, name])
    except orjson.JSONEncodeError:
        return
    assert encode_recommendation(weight, hist, ts, offset, 7, name) == value
