"""JSON bytes that are kept: exact-size, for dict keys and cached answers held by the million."""

from __future__ import annotations

import msgspec

# Kept keys and durable values are encoded by msgspec: byte for byte what orjson.dumps writes
# for them (strings, booleans, ints and floats below 1e16; a unit test compares), but in a
# bytes object of the exact size, where orjson's holds its 4 KiB working buffer.
encode_exact = msgspec.json.Encoder().encode


def kept(dumped: bytes) -> bytes:
    """An exact-size copy of ``orjson.dumps`` output, for bytes that are kept.

    orjson hands back its working buffer as the bytes object: 4 KiB whatever the length
    (orjson >= 3.12; 1 KiB before)."""
    return memoryview(dumped).tobytes()
