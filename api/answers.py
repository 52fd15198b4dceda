"""Where an answer of `GET /segments` comes from (contract section 6).

``strict``: from every partition's owner, which must together cover every partition of one
assignment; otherwise (a rebalance, an owner unreachable) a 503 with Retry-After, never a
partial count.

``any`` (the default): from the owners when they all answer; failing that, each partition from
wherever it can be found, in this order: its owner (even while it rebalances), the workers
keeping its standby copies, any worker (this one answers for itself without a request). Such
an answer is *stale* (unless every part came from a serving owner after all) and the lag of its
parts not from serving owners is the group's, as the broker has it when the answer is computed.
When some partition is nowhere, the views fall back to the query's last answer.

Page pushdown: an answer needs only its first ``limit`` rows (``page x size``, or a cached
prefix's length). Each part (this worker's partitions, each peer's, each holder's) comes as its
first ``limit`` rows in the contract's order plus its total, and the parts are k-way merged: a
segment lives wholly on one partition, so the merged prefix and the summed totals are exact.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from api.backend import SegmentsBackend
from api.errors import ServiceUnavailable
from api.fanout import PeerAnswer, PeerClient
from api.pagination import paginate
from api.params import MAX_LIMIT, InternalScope, SegmentsQuery
from streams.domain.rows import Held, SegmentRow, merge_top

RETRY_AFTER_S = 1

log = logging.getLogger(__name__)

BACKEND = web.AppKey("backend", SegmentsBackend)
PEERS = web.AppKey("peers", PeerClient)


@dataclass(frozen=True, slots=True)
class Answer:
    """The first listed segments of a query in contract order (all of them, or at least as
    many as were asked for), how many it lists in all (``total``; -1 when built: the rows are
    all), as of ``as_of_ms``, when ``lag`` records of the partitions that fed it were not yet
    reflected; ``stale`` when any part is not from a serving owner."""

    rows: list[SegmentRow]
    as_of_ms: int
    lag: int
    stale: bool = False
    total: int = -1

    def __post_init__(self) -> None:
        if self.total < 0:
            object.__setattr__(self, "total", len(self.rows))

    def covers(self, limit: int | None) -> bool:
        """Whether the rows hold the first ``limit`` (None: all) of the answer."""
        held = len(self.rows)
        return held >= self.total or (limit is not None and limit <= held)

    def page(self, page: int, size: int) -> list[SegmentRow]:
        """The rows of page ``page`` (``[]`` past the end); the answer must cover it."""
        if page > -(-self.total // size):  # (compares only: no big-int offsets)
            return []
        return paginate(self.rows, page, size)


async def compute(app: web.Application, q: SegmentsQuery, limit: int | None = None) -> Answer:
    """The query's first ``limit`` rows (None: all) and its total."""
    if limit is not None and limit >= MAX_LIMIT:
        limit = None  # (page x size of a page far past any end: every row, and no big ints)
    backend = app[BACKEND]
    if q.consistency == "strict":
        return await from_owners(backend, app[PEERS], q, limit)
    if backend.is_ready():
        try:
            return await from_owners(backend, app[PEERS], q, limit)
        except ServiceUnavailable:
            pass  # an owner unreachable or partitions moving: look further
    return await from_anywhere(backend, app[PEERS], q, limit)


async def from_owners(backend: SegmentsBackend, peers: PeerClient, q: SegmentsQuery,
                      limit: int | None = None) -> Answer:
    """The query's answer from every partition's owner."""
    as_of_ms = int(time.time() * 1000)
    if not backend.is_ready():
        raise ServiceUnavailable("worker is rebalancing or recovering", RETRY_AFTER_S)
    owners = backend.owners()
    expected = set(range(backend.total_partitions))
    others = [url for url, parts in owners.items() if parts and url != backend.self_url]
    local, total, covered = backend.local_top(q.program_id, q.segment_type, q.segment_basis,
                                              q.min_weight, limit)
    rows = local  # already in contract order; not ours to modify
    lag = backend.lag()
    seen = set(covered)
    if others:
        parts = [local]
        try:
            answers = await asyncio.gather(*(peers.ask(url, q, None, limit) for url in others))
        except ServiceUnavailable as exc:  # (its message names the peer: for the log only)
            _OWNER_UNANSWERED.warning(f"an owner gave no answer: {exc.message}")
            raise ServiceUnavailable("an owner of some partitions gave no answer (unreachable "
                                     "or rebalancing): this worker's log says which",
                                     RETRY_AFTER_S) from None
        for peer in answers:
            if seen & set(peer.partitions):
                raise ServiceUnavailable("partition owners overlap (rebalancing)", RETRY_AFTER_S)
            parts.append(peer.rows)
            total += peer.total
            seen.update(peer.partitions)
            lag += peer.lag
        rows = merge_top(parts, limit)
    if seen != expected:
        raise ServiceUnavailable(
            f"{len(expected - seen)} of {len(expected)} partitions have no ready owner",
            RETRY_AFTER_S)
    return Answer(rows, as_of_ms, lag, False, total)


async def from_anywhere(backend: SegmentsBackend, peers: PeerClient,
                        q: SegmentsQuery, limit: int | None = None) -> Answer:
    """The query's answer from wherever each partition can be found; ServiceUnavailable when
    some partition is nowhere."""
    as_of_ms = int(time.time() * 1000)
    missing = set(range(backend.total_partitions))
    owners = backend.owners()
    owner_of = {p: url for url, parts in owners.items() for p in parts}
    standby_holders = backend.standby_holders()
    members = sorted({backend.self_url, *owners})
    rounds: tuple[Callable[[int], Iterable[str]], ...] = (
        lambda p: [owner_of[p]] if p in owner_of else [],
        lambda p: standby_holders.get(p, []),
    )
    parts: list[list[SegmentRow]] = []
    lag, stale, total = 0, False, 0
    asked: dict[str, set[int]] = {}
    failed: dict[str, str] = {}  # url -> why it gave no answer

    def reachable(url: str) -> bool:
        if url != backend.self_url and peers.is_open(url):
            failed.setdefault(url, f"worker {url} is unreachable (not asked)")
        return url not in failed

    def take(url: str, result: Held | PeerAnswer | BaseException) -> None:
        nonlocal missing, lag, stale, total
        if isinstance(result, ServiceUnavailable):  # unreachable, or no answer from it
            failed[url] = result.message
            return
        if isinstance(result, BaseException):
            raise result
        parts.append(result.rows)
        total += result.total
        missing -= set(result.partitions)
        lag += result.lag
        stale = stale or result.stale

    for candidates in rounds:
        plan: dict[str, set[int]] = {}
        for p in sorted(missing):
            for url in candidates(p):
                if reachable(url) and p not in asked.get(url, ()):
                    plan.setdefault(url, set()).add(p)
                    break
        for url, wanted in plan.items():
            asked.setdefault(url, set()).update(wanted)
        results = await asyncio.gather(*(_held(backend, peers, url, q, held, limit)
                                          for url, held in plan.items()),
                                       return_exceptions=True)
        for url, result in zip(plan, results, strict=True):
            take(url, result)
    # Then every worker in turn, asked for what is still missing: where copies are is computed
    # from the owners as this worker sees them, which a worker just gone changes. One at a
    # time, so that no partition comes from two of them.
    for url in members:
        wanted = missing - asked.get(url, set())
        if not wanted or not reachable(url):
            continue
        asked.setdefault(url, set()).update(wanted)
        try:
            take(url, await _held(backend, peers, url, q, wanted, limit))
        except ServiceUnavailable as exc:
            take(url, exc)
    if not missing:
        return Answer(merge_top(parts, limit), as_of_ms, lag, stale, total)
    unasked = sorted(p for p in missing if not any(p in held for held in asked.values()))
    detail = (f"{len(missing)} of {backend.total_partitions} partitions are found on no "
              f"worker (partitions {_ranges(sorted(missing))}")
    if unasked:
        detail += f"; no worker to ask for {_ranges(unasked)}"
    if failed:  # which workers and why: in the log only (a client learns no internal URL)
        _FOUND_NOWHERE.warning(f"{detail}; {'; '.join(failed.values())})")
        detail += f"; {len(failed)} workers gave no answer: this worker's log says why"
    raise ServiceUnavailable(detail + ")", RETRY_AFTER_S)


class _Throttled:
    """Warnings at most once a second, counting those left out (an outage fails every
    request alike)."""

    def __init__(self) -> None:
        self._at = -math.inf
        self._left_out = 0

    def warning(self, message: str) -> None:
        now = time.monotonic()
        if now - self._at < 1.0:
            self._left_out += 1
            return
        left_out, self._at, self._left_out = self._left_out, now, 0
        log.warning("GET /segments: %s%s", message,
                    f" ({left_out} more like it not logged)" if left_out else "")


_OWNER_UNANSWERED = _Throttled()
_FOUND_NOWHERE = _Throttled()


def _ranges(partitions: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2,5``."""
    spans: list[list[int]] = []
    for p in partitions:
        if spans and spans[-1][1] == p - 1:
            spans[-1][1] = p
        else:
            spans.append([p, p])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


async def _held(backend: SegmentsBackend, peers: PeerClient, url: str, q: SegmentsQuery,
                partitions: set[int], limit: int | None) -> Held | PeerAnswer:
    """What worker ``url`` (this one or a peer) holds of ``partitions``: its first ``limit``
    rows and its total."""
    if url == backend.self_url:
        return await backend.held_query(q.program_id, q.segment_type, q.segment_basis,
                                        q.min_weight, sorted(partitions), limit)
    return await peers.ask(url, q, InternalScope(frozenset(partitions), any=True), limit)
