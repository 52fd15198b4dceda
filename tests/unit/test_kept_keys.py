"""Keys the worker keeps are exact-size bytes, not orjson's 4 KiB working buffers."""

from __future__ import annotations

import tracemalloc

import orjson

from streams.events import family_key
from streams.segments import emitted_key, record_key


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
    assert family_key(*fam) == orjson.dumps(list(fam))
    assert emitted_key(fam, "growth", 0.5) == orjson.dumps([*fam, "growth", 0.5])
    assert record_key(fam, "u1") == orjson.dumps([*fam, "u1"])
    for make in (lambda i: family_key("program-1", "label", f"l{i}", "view"),
                 lambda i: emitted_key(("program-1", "label", f"l{i}", "view"), "growth", 0.5),
                 lambda i: record_key(("program-1", "label", "l1", "view"), f"user-{i}")):
        # ~100 bytes of key and object header each (a plain orjson.dumps holds 4 KiB)
        assert _bytes_per_key(make) < 400
