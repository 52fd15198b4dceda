"""The stream hub (api/stream.py) with scripted answers: a client that applies its snapshot and
every update holds exactly each answer; clients of a query share its answers; slow clients are
cut off; the number of streams is bounded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from api import stream
from api.answers import Answer
from api.errors import ServiceUnavailable
from api.params import SegmentsQuery
from api.stream import StreamHub
from streams.domain.rows import SegmentRow, contract_order

Q = SegmentsQuery(program_id="p", min_weight=0.5, size=3)


def row(basis_id: str, count: int, name: str = "n") -> SegmentRow:
    return SegmentRow("growth", "label", basis_id, "view", name, count, 0.75)


class Script:
    """Answers handed out in turn (the last one repeats); ``stale``: the calls (from 0) whose
    answer is stale."""

    def __init__(self, *answers: list[SegmentRow], stale: frozenset[int] = frozenset()) -> None:
        self.answers = [contract_order(list(a)) for a in answers]
        self.stale = stale
        self.calls = 0

    async def __call__(self, q: SegmentsQuery) -> Answer:
        rows = self.answers[min(self.calls, len(self.answers) - 1)]
        stale = self.calls in self.stale
        self.calls += 1
        return Answer(rows, 1_000 + self.calls, self.calls, stale)


def parse(data: bytes) -> tuple[str, dict[str, Any]]:
    fields = dict(line.split(": ", 1) for line in data.decode().strip().split("\n"))
    return fields["event"], json.loads(fields["data"])


def apply(held: dict[tuple[str, str], dict[str, Any]], name: str,
          data: dict[str, Any]) -> list[tuple[str, int]]:
    if name == "snapshot":
        held.clear()
        held.update({(r["segment_basis_id"], r["action_type"]): r for r in data["items"]})
    else:
        for basis_id, action in data["removed"]:
            del held[(basis_id, action)]
        for r in data["upserts"]:
            held[(r["segment_basis_id"], r["action_type"])] = r
    ordered = sorted(held.values(), key=lambda r: (-r["user_count"], r["segment_basis_id"]))
    return [(r["segment_basis_id"], r["user_count"]) for r in ordered]


async def test_snapshot_then_updates_give_every_answer() -> None:
    answers = [[row("a", 5), row("b", 4), row("c", 3), row("d", 1)],
               [row("a", 5), row("b", 6), row("c", 3), row("d", 1)],  # b moves up
               [row("a", 5), row("b", 6), row("d", 4)],  # c leaves, d enters the top 3
               [row("a", 5), row("b", 6), row("d", 4, name="renamed")]]
    script = Script(*answers)
    hub = StreamHub(script, 0.01, 10)
    client, snapshot = await hub.open(Q, lambda: None)
    held: dict[tuple[str, str], dict[str, Any]] = {}
    name, data = parse(snapshot)
    assert name == "snapshot" and data["total"] == 4 and data["size"] == 3
    assert data["page"] == 1 and (data["as_of"], data["lag"]) == (1001, 1)
    assert apply(held, name, data) == [("a", 5), ("b", 4), ("c", 3)]
    for answer in answers[1:]:
        name, data = parse(await asyncio.wait_for(client.queue.get(), 1))
        assert name == "update"
        want = [(r.segment_basis_id, r.user_count) for r in contract_order(list(answer))[:3]]
        assert apply(held, name, data) == want
        assert data["total"] == len(answer)
    assert held[("d", "view")]["name"] == "renamed"
    hub.close(client)
    await hub.stop()


async def test_nothing_is_sent_for_an_unchanged_answer_until_its_freshness_is_due(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "FRESHNESS_EVERY_S", 0.3)
    hub = StreamHub(Script([row("a", 5)]), 0.02, 10)
    client, _ = await hub.open(Q, lambda: None)
    await asyncio.sleep(0.15)
    assert client.queue.empty()
    name, data = parse(await asyncio.wait_for(client.queue.get(), 1))
    assert name == "update" and data["upserts"] == [] and data["removed"] == []
    assert data["as_of"] > 1001  # the same answer, computed again since
    await hub.stop()


async def test_clients_of_one_query_share_its_answers() -> None:
    script = Script([row("a", 5)], [row("a", 6)])
    hub = StreamHub(script, 0.05, 10)
    first, snap1 = await hub.open(Q, lambda: None)
    second, snap2 = await hub.open(Q, lambda: None)
    assert snap1 == snap2 and script.calls == 1
    other, _ = await hub.open(SegmentsQuery(program_id="p", min_weight=0.7, size=3), lambda: None)
    assert script.calls == 2 and hub.clients == 3
    for client in (first, second):
        _, data = parse(await asyncio.wait_for(client.queue.get(), 1))
        assert data["upserts"][0]["user_count"] == 6
    for client in (first, second, other):
        hub.close(client)
    assert hub.clients == 0
    await hub.stop()


async def test_a_client_that_does_not_keep_up_is_cut_off() -> None:
    counts = [[row("a", n)] for n in range(1, 200)]
    aborted: list[bool] = []
    hub = StreamHub(Script(*counts), 0.001, 10)
    client, _ = await hub.open(Q, lambda: aborted.append(True))
    deadline = asyncio.get_running_loop().time() + 5
    while not client.dropped:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert aborted == [True] and client.queue.qsize() == stream.QUEUE_MAX
    await hub.stop()


async def test_the_number_of_streams_is_bounded() -> None:
    hub = StreamHub(Script([row("a", 1)]), 1.0, 2)
    await hub.open(Q, lambda: None)
    await hub.open(Q, lambda: None)
    with pytest.raises(ServiceUnavailable):
        await hub.open(Q, lambda: None)
    await hub.stop()


async def test_an_answer_that_cannot_be_computed_keeps_the_last_one() -> None:
    calls = 0

    async def flaky(q: SegmentsQuery) -> Answer:
        nonlocal calls
        calls += 1
        if 2 <= calls <= 4:
            raise ServiceUnavailable("rebalancing")
        return Answer([row("a", calls)], calls, 0)

    hub = StreamHub(flaky, 0.01, 10)
    client, _ = await hub.open(Q, lambda: None)
    _, data = parse(await asyncio.wait_for(client.queue.get(), 1))
    assert data["upserts"][0]["user_count"] == 5
    await hub.stop()


async def test_staleness_is_said_and_its_end_too() -> None:
    """An answer that is stale says so (``stale: true``); the first one that is not, even with
    the same rows, is sent at once so that the client stops showing it as stale."""
    script = Script([row("a", 1)], stale=frozenset({0, 1}))
    hub = StreamHub(script, 0.01, 10)
    client, snapshot = await hub.open(Q, lambda: None)
    assert parse(snapshot)[1]["stale"] is True
    name, data = parse(await asyncio.wait_for(client.queue.get(), 1))
    assert (name, data["upserts"], data.get("stale")) == ("update", [], None)
    assert script.calls == 3  # the second (stale, unchanged) answer was not sent
    await hub.stop()


async def test_groups_of_one_query_with_other_sizes_share_one_computation_per_interval() -> None:
    asked: list[int] = []
    answers = [[row("a", 5), row("b", 4), row("c", 3)], [row("a", 5), row("c", 6), row("b", 4)]]
    gate = asyncio.Event()

    async def compute(q: SegmentsQuery) -> Answer:
        asked.append(q.size)
        if len(asked) > 2:
            await gate.wait()
        rows = contract_order(list(answers[0 if len(asked) <= 2 else 1]))
        return Answer(rows[:q.size], len(asked), 0, False, len(rows))

    hub = StreamHub(compute, 0.01, 10)
    small, _ = await hub.open(SegmentsQuery(program_id="p", min_weight=0.5, size=1), lambda: None)
    wide, _ = await hub.open(SegmentsQuery(program_id="p", min_weight=0.5, size=3), lambda: None)
    assert asked == [1, 3]  # each group's snapshot
    await asyncio.sleep(0.05)
    assert asked == [1, 3, 3]  # one interval: one computation, for the widest group
    gate.set()
    _, data = parse(await asyncio.wait_for(small.queue.get(), 1))
    assert [u["segment_basis_id"] for u in data["upserts"]] == ["c"]
    assert data["removed"] == [["a", "view"]] and data["total"] == 3
    _, data = parse(await asyncio.wait_for(wide.queue.get(), 1))
    assert [u["segment_basis_id"] for u in data["upserts"]] == ["c"] and data["total"] == 3
    await hub.stop()
