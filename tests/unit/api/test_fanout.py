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


# -- page pushdown ---------------------------------------------------------------------------------

def limited(items: list[list[object]], total: int) -> bytes:
    return json.dumps({"items": items, "partitions": [0], "total": total}).encode()


def rows_of(*counts_and_ids: tuple[int, str]) -> list[list[object]]:
    return [["base", "asset", basis_id, "view", "A", count, 0.75]
            for count, basis_id in counts_and_ids]


def test_a_limited_answer_keeps_its_rows_and_total() -> None:
    answer = parse_answer(limited(rows_of((5, "b"), (5, "c"), (2, "a")), 40), Q, 8, None, 3)
    assert [r.segment_basis_id for r in answer.rows] == ["b", "c", "a"]
    assert answer.total == 40
    short = parse_answer(limited(rows_of((5, "b")), 1), Q, 8, None, 3)  # fewer than asked
    assert short.total == 1


@pytest.mark.parametrize("raw", [
    limited(rows_of((2, "a"), (5, "b")), 2),  # out of order: the merge would be wrong
    limited(rows_of((5, "b"), (5, "a")), 2),  # a tie out of order
    limited(rows_of((5, "a"), (4, "b"), (3, "c"), (2, "d")), 9),  # more rows than the limit
    limited(rows_of((5, "a"), (4, "b")), 9),  # fewer rows than min(limit, total)
    limited(rows_of((5, "a"), (4, "b")), 1),  # a total below its own rows
])
def test_limited_answers_that_break_the_protocol_are_refused(raw: bytes) -> None:
    with pytest.raises(BadAnswer):
        parse_answer(raw, Q, 8, None, 3)


def test_an_older_peer_without_total_is_ordered_and_cut_here() -> None:
    old = body(rows_of((1, "z"), (5, "b"), (5, "a"), (3, "c")), [0])
    answer = parse_answer(old, Q, 8, None, 2)
    assert [r.segment_basis_id for r in answer.rows] == ["a", "b"]
    assert answer.total == 4


def test_a_total_without_a_limit_asked_is_refused() -> None:
    with pytest.raises(BadAnswer):
        parse_answer(limited(rows_of((5, "a")), 1), Q, 8)
