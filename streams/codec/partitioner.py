"""Kafka's default partitioner for keyed records, as the Java client computes it:
``(murmur2(key) & 0x7fffffff) % partitions``.

The worker routes every event to its segment family's partition with it. aiokafka's
``murmur2`` reads the key byte by byte in Python; this one reads whole 32-bit words at once,
a few times faster, and gives the same hashes (``tests/unit/codec/test_partitioner.py`` checks
it against aiokafka's and Kafka's test vectors).
"""

from __future__ import annotations

import struct

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C
_words: dict[int, struct.Struct] = {}


def murmur2(data: bytes) -> int:
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


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record with this key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
