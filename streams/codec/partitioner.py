"""Kafka's default partitioner for keyed records, as the Java client computes it:
``(murmur2(key) & 0x7fffffff) % partitions``.

The worker routes every event to its segment family's partition with it, and every change to
its segment's. The hash is the ``murmurhash2`` package's (compiled: BENCHMARKS.md, ingest)
where it is installed, else ``murmur2_python``: aiokafka's ``murmur2`` reads the key byte by
byte in Python; this one reads whole 32-bit words at once.
All give the same hashes (``tests/unit/codec/test_partitioner.py`` checks them against
aiokafka's and Kafka's test vectors, and that the compiled one is used where installed).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C
_words: dict[int, struct.Struct] = {}


def murmur2_python(data: bytes) -> int:
    """MurmurHash2 of ``data`` as Kafka's Java client computes it (unsigned 32 bits)."""
    length = len(data)
    h = _SEED ^ length
    n = length >> 2
    if n:
        words = _words.get(n)
        if words is None:
            words = _words[n] = struct.Struct(f"<{n}I")
        for k in words.unpack_from(data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    extra = length & 3
    if extra:
        tail = length - extra
        if extra == 3:
            h ^= data[tail + 2] << 16
        if extra >= 2:
            h ^= data[tail + 1] << 8
        h = ((h ^ data[tail]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


_compiled: Callable[[bytes, int], int] | None
try:
    from murmurhash2 import murmurhash2 as _compiled
except ImportError:  # a platform without its wheel
    _compiled = None

COMPILED = _compiled is not None


def murmur2(data: bytes) -> int:
    """MurmurHash2 of ``data`` as Kafka's Java client computes it (unsigned 32 bits)."""
    return murmur2_python(data) if _compiled is None else _compiled(data, _SEED)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record with this key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
