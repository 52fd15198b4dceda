"""The worker's murmur2 gives aiokafka's (Kafka's Java client's) hashes for any key, compiled or
not, and is the compiled one wherever the ``murmurhash2`` package is installed."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st
from packaging.requirements import Requirement

from streams.codec import partitioner
from streams.codec.partitioner import murmur2, murmur2_python, partition_for

ROOT = Path(__file__).resolve().parents[3]
HASHES = [murmur2, murmur2_python]


@pytest.mark.parametrize("hash_", HASHES, ids=["murmur2", "python"])
@given(data=st.binary(max_size=300))
def test_murmur2_is_aiokafkas(hash_: object, data: bytes) -> None:
    assert hash_(data) == aiokafka_murmur2(data)  # type: ignore[operator]


@given(st.binary(max_size=100), st.integers(min_value=1, max_value=64))
def test_partition_is_the_default_partitioners(key: bytes, partitions: int) -> None:
    assert partition_for(key, partitions) == DefaultPartitioner()(key, list(range(partitions)),
                                                                  list(range(partitions)))


@pytest.mark.parametrize("hash_", HASHES, ids=["murmur2", "python"])
def test_known_hashes(hash_: object) -> None:
    # Kafka's own test vectors (org.apache.kafka.common.utils.UtilsTest#testMurmur2)
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
             b"abc": 479470107}
    for key, signed in cases.items():
        assert hash_(key) == signed & 0xFFFFFFFF  # type: ignore[operator]


def test_the_compiled_hash_is_used_where_installed() -> None:
    # Wherever pyproject.toml's marker installs it, a failed import must not go unnoticed.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (wanted,) = [Requirement(r) for r in pyproject["project"]["dependencies"]
                 if r.startswith("murmurhash2")]
    if wanted.marker is not None and not wanted.marker.evaluate():
        pytest.skip("pyproject.toml does not install murmurhash2 on this platform")
    assert importlib.util.find_spec("murmurhash2") is not None, "murmurhash2 is not installed"
    assert partitioner.COMPILED
    assert partitioner._compiled is not None
    assert murmur2(b"abc") == partitioner._compiled(b"abc", 0x9747B28C)
