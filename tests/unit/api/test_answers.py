"""Where answers come from (api/answers.py) in a scripted cluster of in-memory workers: every
owner serving gives a fresh answer; an owner unreachable or rebalancing gives, with
``consistency=any``, an answer from standby copies flagged stale with the group's lag, and with
``strict`` a 503; a partition found nowhere is a 503 either way; and the views fall back to the
query's last answer, its lag grown by the records that came since."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from api import answers
from api.app import create_web_app
from api.errors import ServiceUnavailable
from api.fanout import PeerAnswer, PeerUnavailable
from api.params import InternalScope, SegmentsQuery
from streams.domain.rows import Held, SegmentRow, contract_order

Q = SegmentsQuery(program_id="p", min_weight=0.5)
TOTAL = 4


def row(partition: int, count: int = 1) -> SegmentRow:
    return SegmentRow("growth", "label", f"b{partition}", "view", "n", count, 0.7)


@dataclass
class FakeWorker:
    """A worker: its partitions (serving or not), its ready standby copies, lags."""

    url: str
    own: set[int]
    copies: set[int] = field(default_factory=set)
    serving: bool = True
    cluster: dict[str, FakeWorker] = field(default_factory=dict)
    ends: int | None = 100

    self_url = property(lambda self: self.url)
    total_partitions = TOTAL
    cache_ttl_s = 5.0

    def is_ready(self) -> bool:
        return self.serving

    def readiness(self) -> str | None:
        return None if self.serving else "rebuilding"

    def local_query(self, *query: Any) -> tuple[list[SegmentRow], list[int]]:
        return contract_order([row(p) for p in self.own]), sorted(self.own)

    def local_top(self, *query: Any) -> tuple[list[SegmentRow], int, list[int]]:
        rows, parts = self.local_query()
        return rows, len(rows), parts

    def partitions(self) -> list[int]:
        return sorted(self.own)

    def rebuilding(self) -> list[int]:
        return []

    def owners(self) -> dict[str, list[int]]:
        return {url: sorted(w.own) for url, w in self.cluster.items()}

    def recommendations(self) -> int:
        return 0

    def lag(self, partitions: list[int] | None = None) -> int:
        return len(self.own if partitions is None else partitions)  # 1 per partition

    async def held_query(self, program_id: str, segment_type: str, segment_basis: str,
                         min_weight: float, partitions: list[int],
                         limit: int | None = None) -> Held:
        own = sorted(self.own & set(partitions))
        copies = sorted(self.copies & set(partitions) - self.own)
        lag = (len(own) if self.serving else 10 * len(own)) + 10 * len(copies)
        return Held(contract_order([row(p) for p in own + copies]), sorted(own + copies), lag,
                    bool(copies) or (not self.serving and bool(own)))

    async def input_ends(self, fresh: bool = False) -> int | None:
        return self.ends

    def standbys(self) -> list[int]:
        return sorted(self.copies)

    def standby_holders(self) -> dict[int, list[str]]:
        return {p: [url for url, w in self.cluster.items() if p in w.copies]
                for p in range(TOTAL)}


class FakePeers:
    """The fan-out over the scripted cluster; workers in ``down`` do not answer."""

    def __init__(self, cluster: dict[str, FakeWorker]) -> None:
        self.cluster = cluster
        self.down: set[str] = set()
        self.asked: list[tuple[str, InternalScope | None]] = []

    def is_open(self, url: str) -> bool:
        return False

    async def ask(self, url: str, q: SegmentsQuery, scope: InternalScope | None = None,
                  limit: int | None = None) -> PeerAnswer:
        self.asked.append((url, scope))
        if url in self.down:
            raise PeerUnavailable(f"{url} is down")
        worker = self.cluster[url]
        if scope is None:
            if not worker.serving:
                raise ServiceUnavailable("not ready")
            rows, parts = worker.local_query()
            return PeerAnswer(rows, parts, worker.lag())
        assert scope.any and scope.partitions is not None
        held = await worker.held_query("p", "growth", "label", 0.5, sorted(scope.partitions))
        return PeerAnswer(held.rows, held.partitions, held.lag, held.stale)


def cluster() -> tuple[dict[str, FakeWorker], FakePeers]:
    """Three workers; each partition's copy is on the next worker."""
    workers = {"http://a": FakeWorker("http://a", {0, 1}, copies={3}),
               "http://b": FakeWorker("http://b", {2}, copies={0, 1}),
               "http://c": FakeWorker("http://c", {3}, copies={2})}
    for w in workers.values():
        w.cluster = workers
    return workers, FakePeers(workers)


def app_of(worker: FakeWorker, peers: FakePeers) -> web.Application:
    app = web.Application()
    app[answers.BACKEND] = worker
    app[answers.PEERS] = cast(Any, peers)
    return app


def counts(answer: answers.Answer) -> list[str]:
    return sorted(r.segment_basis_id for r in answer.rows)


@pytest.mark.parametrize("consistency", ["any", "strict"])
async def test_every_owner_serving_gives_a_fresh_answer(consistency: str) -> None:
    workers, peers = cluster()
    q = SegmentsQuery(program_id="p", min_weight=0.5, consistency=cast(Any, consistency))
    answer = await answers.compute(app_of(workers["http://a"], peers), q)
    assert (counts(answer), answer.lag, answer.stale) == (["b0", "b1", "b2", "b3"], 4, False)
    assert [scope for _, scope in peers.asked] == [None, None]


async def test_an_owner_down_is_answered_for_by_its_standby_copies() -> None:
    workers, peers = cluster()
    peers.down.add("http://a")
    q = SegmentsQuery(program_id="p", min_weight=0.5)
    answer = await answers.compute(app_of(workers["http://c"], peers), q)
    assert counts(answer) == ["b0", "b1", "b2", "b3"] and answer.stale
    # its own partition (1) and b's (1), a's partitions from b's copies (10 each)
    assert answer.lag == 1 + 1 + 20
    asked = [(url, scope and sorted(scope.partitions or ())) for url, scope in peers.asked]
    assert asked == [("http://a", None), ("http://b", None),  # the owners, first
                     ("http://a", [0, 1]), ("http://b", [2]),  # then anywhere: owners (and
                     ("http://b", [0, 1])]  # c itself, for 3), then the copies' holders
    with pytest.raises(ServiceUnavailable) as raised:
        await answers.compute(app_of(workers["http://c"], peers),
                              SegmentsQuery(program_id="p", consistency="strict"))
    assert "http://" not in raised.value.message  # a client learns no internal URL


async def test_a_worker_rebalancing_answers_from_what_it_holds() -> None:
    workers, peers = cluster()
    for w in workers.values():
        w.serving = False
    answer = await answers.compute(app_of(workers["http://b"], peers), Q)
    assert counts(answer) == ["b0", "b1", "b2", "b3"] and answer.stale
    # b's own (rebalancing: 10) and copies of 0 and 1 (10 each); c's partition 3 from c
    assert answer.lag == 40


async def test_a_partition_found_nowhere_is_a_503(caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answers, "_FOUND_NOWHERE", answers._Throttled())
    workers, peers = cluster()
    peers.down |= {"http://a", "http://b"}  # partitions 0 and 1: owner a, copies on b
    with caplog.at_level(logging.WARNING, logger="api.answers"), pytest.raises(
            ServiceUnavailable, match="2 of 4 partitions") as raised:
        await answers.compute(app_of(workers["http://c"], peers), Q)
    # The client learns which partitions are missing, not the workers' URLs; the log says
    # why each worker asked gave nothing.
    assert raised.value.message == ("2 of 4 partitions are found on no worker (partitions 0-1; "
                                    "2 workers gave no answer: this worker's log says why)")
    assert "(partitions 0-1; http://a is down; http://b is down)" in caplog.text
    for _ in range(3):  # an outage fails every request alike: a warning a second at most
        with pytest.raises(ServiceUnavailable):
            await answers.compute(app_of(workers["http://c"], peers), Q)
    assert caplog.text.count("found on no worker") == 1


async def test_the_last_answer_stands_in_when_a_partition_is_nowhere() -> None:
    worker = FakeWorker("http://a", {0, 1, 2, 3})
    worker.cluster = {"http://a": worker}
    client = TestClient(TestServer(create_web_app(worker, None)))
    await client.start_server()
    try:
        headers = {"program-id": "p"}
        fresh = await client.get("/segments", headers=headers)
        assert fresh.status == 200 and "Segments-Stale" not in fresh.headers
        body = await fresh.read()
        worker.own, worker.serving = set(), False  # its partitions moved; nobody has them yet
        worker.ends = 130  # 30 records came since
        for consistency in ("strict", "any"):
            again = await client.get("/segments", headers=headers, params={
                "force_refresh": "true", "consistency": consistency})
            if consistency == "strict":
                assert again.status == 503
                continue
            assert again.status == 200 and await again.read() == body
            assert again.headers["Segments-Stale"] == "true"
            assert again.headers["Segments-As-Of"] == fresh.headers["Segments-As-Of"]
            assert int(again.headers["Segments-Lag"]) == int(fresh.headers["Segments-Lag"]) + 30
        other = await client.get("/segments", headers=headers, params={"min_weight": "0.6"})
        assert other.status == 503  # no last answer of that query
    finally:
        await client.close()


def test_cache_entries_of_another_version_are_misses() -> None:
    from api.views import Answer as ViewAnswer
    from api.views import pack, unpack

    entry = unpack(pack(ViewAnswer([], 1_000, 7), b"{}", None))
    assert entry is not None and (entry.as_of_ms, entry.lag, entry.ends, entry.body) == (
        1_000, 7, -1, b"{}")
    assert unpack(b"1000 7\n{}") is None  # the version before the last answers
    assert unpack(b"x y z\n{}") is None


async def test_a_copy_where_the_owners_do_not_say_is_still_found() -> None:
    """Where copies are is computed from the owners as the asking worker sees them; a worker
    just gone changes that (the scale test: 154 503s in its kill -9 phase). Every worker is
    then asked in turn for what is still missing, and no partition is counted twice."""
    workers, peers = cluster()
    workers["http://d"] = FakeWorker("http://d", set(), copies={0, 1})  # (in no one's view)
    for w in workers.values():
        w.cluster = workers
    workers["http://b"].copies = {0}  # b, where c's view puts 0 and 1's copies, has only 0's
    view = {0: ["http://b"], 1: ["http://b"], 2: ["http://c"], 3: ["http://a"]}
    workers["http://c"].standby_holders = lambda: view  # type: ignore[method-assign]
    peers.down.add("http://a")
    answer = await answers.compute(app_of(workers["http://c"], peers), Q)
    assert counts(answer) == ["b0", "b1", "b2", "b3"] and answer.stale
    d_asked = [sorted(scope.partitions or ()) for url, scope in peers.asked
               if url == "http://d" and scope is not None]
    assert d_asked == [[1]]  # only what b did not have
