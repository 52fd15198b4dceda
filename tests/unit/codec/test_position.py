"""An event's input position (codec/position.py): one signed 64-bit integer ordered as
(input partition, input offset), and a dead letter's reason outside the ranges it holds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.codec.position import OFFSET_LIMIT, PARTITION_LIMIT, input_position
from streams.domain.events import INT64_MAX
from streams.domain.exceptions import InvalidEvent

_partitions = st.integers(0, PARTITION_LIMIT - 1)
_offsets = st.integers(0, OFFSET_LIMIT - 1)


@given(_partitions, _offsets, _partitions, _offsets)
def test_positions_order_as_partition_then_offset(p1: int, o1: int, p2: int, o2: int) -> None:
    a, b = input_position(p1, o1), input_position(p2, o2)
    assert (a < b) == ((p1, o1) < (p2, o2)) and (a == b) == ((p1, o1) == (p2, o2))


def test_positions_fit_a_signed_64_bit_integer() -> None:
    assert input_position(0, 0) == 0 and input_position(0, 5) == 5
    assert input_position(PARTITION_LIMIT - 1, OFFSET_LIMIT - 1) == INT64_MAX


@pytest.mark.parametrize(("partition", "offset"), [
    (-1, 0), (0, -1), (PARTITION_LIMIT, 0), (0, OFFSET_LIMIT), (1 << 70, 1 << 70)])
def test_out_of_range_numbers_are_refused(partition: int, offset: int) -> None:
    with pytest.raises(InvalidEvent, match="out of range"):
        input_position(partition, offset)
