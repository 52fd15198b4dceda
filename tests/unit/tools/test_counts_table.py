"""The reference consumer's table (streams/tools/counts_table.py): KTable semantics over
`segment-counts`, versions that drop duplicates and late writes, the contract's order, and
records that are not the topic's skipped; and its rendering."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from rich.console import Console

from streams.codec.json_schemas import schema
from streams.tools.counts_table import CountsTable
from streams.tools.watch import render
from tests.support.terminal import table_rows

Record = tuple[bytes, bytes | None, list[tuple[str, bytes]]]
COUNT = Draft202012Validator(schema("count"))
KEY = Draft202012Validator(schema("count")["$defs"]["segment_key"])


def key(basis_id: str, action: str = "view", program: str = "p", m: float = 0.5,
        segment_type: str = "growth", basis: str = "label") -> bytes:
    return orjson.dumps([program, segment_type, basis, basis_id, action, m])


def value(basis_id: str, count: int, version: int, action: str = "view", program: str = "p",
          m: float = 0.5, segment_type: str = "growth", basis: str = "label",
          strength: float = 0.75, as_of: int = 1_000, name: str | None = None) -> bytes:
    return orjson.dumps({
        "program_id": program, "segment_type": segment_type, "segment_basis": basis,
        "segment_basis_id": basis_id, "action_type": action, "name": name or basis_id.upper(),
        "min_weight": m, "user_count": count, "strength": strength, "as_of": as_of,
        "version": version})


def shown(table: CountsTable, n: int = 100) -> list[tuple[str, str, int]]:
    return [(h.row.segment_basis_id, h.row.action_type, h.row.user_count) for h in table.top(n)]


def test_the_records_made_here_are_in_the_contract_format() -> None:
    # (these tests' own records must be what count.json describes, or they prove nothing)
    assert COUNT.is_valid(orjson.loads(value("l1", 3, 7)))
    assert KEY.is_valid(orjson.loads(key("l1")))
    assert not COUNT.is_valid(orjson.loads(value("l1", 0, 7)))  # no member: a tombstone


def test_latest_value_per_key_and_a_tombstone_removes_it() -> None:
    table = CountsTable("p", 0.5)
    assert table.apply(key("l1"), value("l1", 3, 1))
    assert table.apply(key("l2"), value("l2", 5, 1))
    assert table.apply(key("l1"), value("l1", 7, 2))
    assert shown(table) == [("l1", "view", 7), ("l2", "view", 5)]
    assert table.top(1)[0].delta == 4
    table.settle()
    assert [held.delta for held in table.top(2)] == [0, 0]
    assert table.apply(key("l2"), None)
    assert shown(table) == [("l1", "view", 7)]
    assert not table.apply(key("l9"), None)  # a tombstone of a key never seen: nothing to do


@pytest.mark.parametrize(("late", "kept"), [
    (value("l1", 9, 2), 4),  # a duplicate (at-least-once)
    (value("l1", 2, 1), 4),  # a fenced old owner's late write
    (value("l1", 5, 3), 5),  # newer
])
def test_a_value_not_newer_than_the_held_one_is_dropped(late: bytes, kept: int) -> None:
    table = CountsTable("p", 0.5)
    table.apply(key("l1"), value("l1", 3, 1))
    table.apply(key("l1"), value("l1", 4, 2))
    table.apply(key("l1"), late)
    assert shown(table) == [("l1", "view", kept)]


def test_a_late_value_after_its_tombstone_is_dropped_within_the_bound() -> None:
    table = CountsTable("p", 0.5, max_removed_versions=2)
    for basis_id in ("l1", "l2", "l3"):
        table.apply(key(basis_id), value(basis_id, 3, 5))
        table.apply(key(basis_id), None)
    assert not table.apply(key("l3"), value("l3", 1, 4))
    assert table.apply(key("l3"), value("l3", 2, 6))
    # l1's version was forgotten (the bound): its late write shows, as a KTable's would
    assert table.apply(key("l1"), value("l1", 1, 4))


def version(v: int) -> list[tuple[str, bytes]]:
    return [("version", str(v).encode())]


def test_a_tombstone_not_newer_than_the_held_value_is_dropped() -> None:
    table = CountsTable("p", 0.5)
    table.apply(key("l1"), value("l1", 3, 5))
    assert not table.apply(key("l1"), None, version(4))  # a late tombstone of an old owner
    assert not table.apply(key("l1"), None, version(5))
    assert shown(table) == [("l1", "view", 3)] and table.dropped == 2
    assert table.apply(key("l1"), None, version(6))
    assert not table.apply(key("l1"), value("l1", 9, 6))  # as old as the tombstone
    assert table.apply(key("l1"), value("l1", 9, 7))
    assert table.apply(key("l1"), None, [("other", b"x")])  # no version: a KTable's rule
    assert len(table) == 0
    for bad in (b"", b"-1", b"1.5", b"x" * 40, b"99999999999999999999"):
        assert not table.apply(key("l1"), None, [("version", bad)])
    assert table.skipped == 5


def test_only_the_view_counts_and_what_is_not_the_topic_is_skipped() -> None:
    table = CountsTable("p", 0.5, "base", "asset")
    others = [(key("a1", program="q", segment_type="base", basis="asset"),
               value("a1", 3, 1, program="q", segment_type="base", basis="asset")),
              (key("a1", m=0.7, segment_type="base", basis="asset"),
               value("a1", 3, 1, m=0.7, segment_type="base", basis="asset")),
              (key("a1"), value("a1", 3, 1)),  # growth labels
              (key("a1", segment_type="base"), value("a1", 3, 1, segment_type="base"))]
    for k, v in others:
        assert not table.apply(k, v)
    assert table.skipped == 0 and len(table) == 0
    malformed: list[tuple[bytes | None, bytes | None]] = [
        (None, b"{}"), (b"not json", None), (b'["p","base","asset","a1","view"]', None),
        (key("a1", segment_type="base", basis="asset"), b"{}"),
        (key("a1", segment_type="base", basis="asset"), b"\xff"),
        # a value naming another segment than its key
        (key("a1", segment_type="base", basis="asset"),
         value("a2", 3, 1, segment_type="base", basis="asset")),
        (key("a1", segment_type="base", basis="asset"),
         value("a1", -1, 1, segment_type="base", basis="asset")),
    ]
    for k, v in malformed:
        assert not table.apply(k, v)
    assert table.skipped == len(malformed) and len(table) == 0
    assert table.records == len(others) + len(malformed)
    assert table.apply(key("a1", segment_type="base", basis="asset"),
                       value("a1", 3, 1, segment_type="base", basis="asset"))


def test_top_is_in_the_contract_order() -> None:
    table = CountsTable("p", 0.5)
    for i, (basis_id, action, count) in enumerate([("b", "view", 5), ("a", "view", 5),
                                                   ("a", "click", 5), ("z", "view", 9),
                                                   ("c", "view", 1)]):
        table.apply(key(basis_id, action), value(basis_id, count, i, action))
    assert shown(table) == [("z", "view", 9), ("a", "click", 5), ("a", "view", 5),
                            ("b", "view", 5), ("c", "view", 1)]
    assert shown(table, 2) == shown(table)[:2]


@st.composite
def _histories(draw: st.DrawFn) -> tuple[list[Record], dict[str, int]]:
    """A feed of records whose true versions grow per key, with duplicates and stale values and
    tombstones re-sent later (as at-least-once delivery and a fenced owner do), and the final
    state."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    state: dict[str, int] = {}
    versions: dict[str, int] = {}
    feed: list[Record] = []
    sent: list[Record] = []
    for _ in range(draw(st.integers(1, 120))):
        basis_id = f"l{rng.randrange(8)}"
        roll = rng.random()
        if sent and roll < 0.25:
            feed.append(rng.choice(sent))  # a value re-sent: never newer than what followed
            continue
        versions[basis_id] = versions.get(basis_id, 0) + rng.randint(1, 3)
        if roll < 0.4 and basis_id in state:
            del state[basis_id]
            tombstone = (key(basis_id), None, version(versions[basis_id]))
            feed.append(tombstone)
            sent.append(tombstone)  # (re-sent later: never newer than what followed)
        else:
            state[basis_id] = rng.randint(1, 20)
            record = (key(basis_id), value(basis_id, state[basis_id], versions[basis_id]), [])
            feed.append(record)
            sent.append(record)
    return feed, state


@settings(max_examples=300)
@given(_histories())
def test_duplicates_and_stale_values_never_change_the_table(
        history: tuple[list[Record], dict[str, int]]) -> None:
    feed, state = history
    table = CountsTable("p", 0.5)
    for k, v, headers in feed:
        table.apply(k, v, headers)
    want = sorted(((b, "view", c) for b, c in state.items()), key=lambda r: (-r[2], r[0]))
    assert shown(table) == want


def test_render_shows_the_top_rows_and_the_status() -> None:
    table = CountsTable("p", 0.5)
    table.apply(key("l1"), value("l1", 3, 1, name="Label one"))
    table.apply(key("l2"), value("l2", 8, 1, as_of=1_767_225_600_000))
    table.apply(key("l1"), value("l1", 5, 2))
    console = Console(record=True, width=160, color_system=None)
    console.print(render(table, 1, "segment-counts", "live"))
    text = console.export_text()
    assert table_rows(text) == [["1", "l2", "view", "L2", "8", "0.7500", ""]]
    assert "l1" not in text  # beyond the size asked for
    assert "2 segments" in text and "2026-01-01T00:00:00Z" in text and "live" in text
    big = Console(record=True, width=160, color_system=None)
    big.print(render(table, 5, "segment-counts", "live"))
    assert table_rows(big.export_text())[1] == ["2", "l1", "view", "L1", "5", "0.7500", "+2"]
