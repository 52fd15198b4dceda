"""The worker's murmur2 gives aiokafka's (Kafka's Java client's) hashes for any key."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from streams.codec.partitioner import murmur2, partition_for


@given(st.binary(max_size=300))
def test_murmur2_is_aiokafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@given(st.binary(max_size=100), st.integers(min_value=1, max_value=64))
def test_partition_is_the_default_partitioners(key: bytes, partitions: int) -> None:
    assert partition_for(key, partitions) == DefaultPartitioner()(key, list(range(partitions)),
                                                                  list(range(partitions)))


def test_known_hashes() -> None:
    # Kafka's own test vectors (org.apache.kafka.common.utils.UtilsTest#testMurmur2)
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
             b"abc": 479470107}
    for key, signed in cases.items():
        assert murmur2(key) == signed & 0xFFFFFFFF
