"""A peer's answer is validated before it is merged (api/fanout.py): anything but a well-formed
answer to the very query asked becomes an error, never a row."""

from __future__ import annotations

import json
from collections.abc import Iterable

import msgspec
import pytest

from api.fanout import BadAnswer, parse_answer
from api.params import SegmentsQuery
from streams.domain.rows import SegmentRow

Q = SegmentsQuery(program_id="p1", segment_type="base", segment_basis="asset", min_weight=0.5)
ROW = ["base", "asset", "a1", "view", "Asset 1", 3, 0.75]


def body(items: Iterable[object] = (ROW,), partitions: Iterable[object] = (0, 2)) -> bytes:
    return json.dumps({"items": list(items), "partitions": list(partitions)}).encode()


def test_a_valid_answer() -> None:
    answer = parse_answer(body(), Q, 8)
    assert [msgspec.structs.astuple(r) for r in answer.rows] == [tuple(ROW)]
    assert answer.partitions == [0, 2] and answer.lag == 0
    assert all(isinstance(r, SegmentRow) for r in answer.rows)
    empty = parse_answer(body((), ()), Q, 8)
    assert (empty.rows, empty.partitions) == ([], [])
    assert parse_answer(b'{"items": [], "partitions": [1], "lag": 12}', Q, 8).lag == 12


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[]", b"null", b'{"items": []}', b'{"partitions": []}',
    body(partitions=[8]), body(partitions=[-1]), body(partitions=[1, 1]),
    body(partitions=["0"]), body(partitions=[0.5]),
    body([["growth", *ROW[1:]]]),  # another segment type than asked
    body([["base", "label", *ROW[2:]]]),  # another basis
    body([[*ROW[:5], 0, 0.75]]), body([[*ROW[:5], -3, 0.75]]),  # no or negative members
    body([[*ROW[:5], 3.5, 0.75]]), body([[*ROW[:5], 10**30, 0.75]]),
    body([[*ROW[:6], 0.25]]),  # a mean below the threshold
    body([[*ROW[:6], 1.5]]), body([[*ROW[:6], "0.7"]]),
    body([ROW[:6]]), body([[*ROW, "extra"]]),
    body([ROW, ROW]),  # one segment twice
    b'{"items": [], "partitions": [], "extra": 1}',
    b'{"items": [], "partitions": [], "lag": -1}',
    b'{"items": [], "partitions": [], "lag": "0"}',
    b'{"items": ' + b"[" * 50_000 + b"]" * 50_000 + b', "partitions": []}',
    b'{"items": [["base", "asset", "a1", "view", "A", 3, NaN]], "partitions": []}',
])
def test_malformed_answers_are_refused(raw: bytes) -> None:
    with pytest.raises(BadAnswer):
        parse_answer(raw, Q, 8)
