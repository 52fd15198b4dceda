"""Asking the other workers for their part of an answer.

A peer is another process on the network: its answer is validated before it is merged
(shape, types, ranges, the query it answers, partitions that exist, no row twice), its body
is read up to a bound, and it is given up after a short timeout. Asked with ``limit`` (page
pushdown), a peer sends only its first ``limit`` rows in the contract's order and how many it
lists in all (``total``); the body is then bounded by ``limit`` rows. A peer of an older
version ignores ``limit`` and sends every row without ``total``: its rows are then ordered and
cut here (the parameter and the field are the protocol's only version marks; a newer peer
adds ``total`` only when asked with ``limit``, so an older worker's decoder accepts it).
A limited answer carries header ``Segments-Limit`` (the limit it applied) and is read up to
a bound of that many rows; an older peer's, up to ``MAX_ANSWER_BYTES``. A peer that failed is
not asked again until a cool-down has passed (a circuit breaker, doubling up to a maximum),
so that requests fail fast, not each after a timeout, while it is unreachable.
"""

from __future__ import annotations

import itertools
import math
import operator
import time
from dataclasses import dataclass
from typing import Annotated, Literal

import aiohttp
import msgspec
from msgspec import Meta

from api.auth import INTERNAL_ROUTE, NONCE_HEADER, SIGNATURE_HEADER, ClusterAuth
from api.errors import ServiceUnavailable
from api.params import MAX_LIMIT, InternalScope, SegmentsQuery
from streams.domain.rows import SegmentRow, top

MAX_ANSWER_BYTES = 64 * 1024 * 1024
LIMIT_HEADER = "Segments-Limit"
RETRY_AFTER_S = 1
# The most a row can take on the wire (msgspec's JSON: ids, action and name at their
# contract's maximum lengths, every character escaped as \uXXXX), and an answer's
# partitions, lag and punctuation: a limited answer is bounded by these.
MAX_ROW_BYTES = 6 * (256 + 64 + 512) + 6 * (10 + 10 + 20) + 64
ANSWER_OVERHEAD_BYTES = 64 * 1024

class _PeerRow(SegmentRow, array_like=True, forbid_unknown_fields=True, frozen=True,
               gc=False):
    """A row as a peer must send it."""

    segment_type: Literal["growth", "base", "discovery"]
    segment_basis: Literal["label", "asset"]
    user_count: Annotated[int, Meta(ge=1, le=(1 << 63) - 1)]
    strength: Annotated[float, Meta(ge=0.0, le=1.0)]


class _Answer(msgspec.Struct, forbid_unknown_fields=True):
    items: list[_PeerRow]
    partitions: list[Annotated[int, Meta(ge=0)]]
    lag: Annotated[int, Meta(ge=0, le=(1 << 63) - 1)] = 0
    stale: bool = False
    total: Annotated[int, Meta(ge=0, le=(1 << 63) - 1)] | None = None


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    """A peer's part of an answer: its first rows in contract order, the partitions they
    cover, the records of those partitions not reflected yet, whether any part is not from a
    serving owner, and how many rows it lists in all (-1 when built: the rows are all)."""

    rows: list[SegmentRow]
    partitions: list[int]
    lag: int
    stale: bool = False
    total: int = -1

    def __post_init__(self) -> None:
        if self.total < 0:
            object.__setattr__(self, "total", len(self.rows))


def answer_bound(limit: int | None, max_bytes: int = MAX_ANSWER_BYTES) -> int:
    """The most bytes a peer's answer of at most ``limit`` rows may take."""
    if limit is None:
        return max_bytes
    return min(max_bytes, ANSWER_OVERHEAD_BYTES + limit * MAX_ROW_BYTES)


_decoder = msgspec.json.Decoder(_Answer)


class PeerUnavailable(ServiceUnavailable):
    """A peer did not give a valid answer in time (or its circuit is open)."""


class BadAnswer(ValueError):
    """A peer's answer breaks the internal protocol."""


@dataclass
class _Circuit:
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False  # a request is testing whether the peer is back


def parse_answer(body: bytes, q: SegmentsQuery, total_partitions: int,
                 asked: frozenset[int] | None = None, limit: int | None = None) -> PeerAnswer:
    """A peer's answer to ``q`` (for the partitions ``asked``, when given; its first ``limit``
    rows, when given), its rows in contract order. Raises BadAnswer."""
    try:
        answer = _decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise BadAnswer(str(exc)) from None
    parts = answer.partitions
    if len(set(parts)) != len(parts) or any(p >= total_partitions for p in parts):
        raise BadAnswer(f"partitions {parts[:10]} of {total_partitions}")
    if asked is not None and not set(parts) <= asked:
        raise BadAnswer(f"partitions {sorted(set(parts) - asked)[:10]} not asked for")
    floor = q.min_weight * (1 - 1e-12)  # a mean of weights >= m, up to its rounding
    items = answer.items
    # The checks in comprehensions, the loop run only to name a problem (thousands of rows).
    if items and ({(r.segment_type, r.segment_basis) for r in items} != {
            (q.segment_type, q.segment_basis)} or not min(r.strength for r in items) >= floor
            or len({(r.segment_basis_id, r.action_type) for r in items}) != len(items)):
        seen: set[tuple[str, str]] = set()
        for row in items:
            if row.segment_type != q.segment_type or row.segment_basis != q.segment_basis:
                raise BadAnswer(f"a row of another query: {row}")
            if not row.strength >= floor or not math.isfinite(row.strength):
                raise BadAnswer(f"strength {row.strength} below min_weight {q.min_weight}")
            family = (row.segment_basis_id, row.action_type)
            if family in seen:
                raise BadAnswer(f"segment {family} twice")
            seen.add(family)
    rows: list[SegmentRow] = list(items)
    if answer.total is None:  # a peer that does not push pages down: every row it lists
        return PeerAnswer(top(rows, limit), parts, answer.lag, answer.stale, len(rows))
    # The asking worker merges these rows as they come: their order is checked, not assumed.
    if limit is None or len(rows) != min(limit, answer.total):
        raise BadAnswer(f"{len(rows)} rows of {answer.total} for a limit of {limit}")
    keys = [(-r.user_count, r.segment_basis_id, r.action_type, r.name) for r in rows]  # sort_key
    if not all(map(operator.lt, keys, itertools.islice(keys, 1, None))):
        raise BadAnswer("rows not in the contract's order")
    return PeerAnswer(rows, parts, answer.lag, answer.stale, answer.total)


class PeerClient:
    """Asks other workers for their local part of an answer (``GET /internal/segments``)."""

    def __init__(self, session: aiohttp.ClientSession, total_partitions: int,
                 timeout_s: float = 2.0, cooldown_s: float = 0.5,
                 max_cooldown_s: float = 8.0, max_answer_bytes: int = MAX_ANSWER_BYTES,
                 cluster: ClusterAuth | None = None) -> None:
        self._session = session
        self._cluster = cluster
        self._max_answer_bytes = max_answer_bytes
        self._total_partitions = total_partitions
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 1.0))
        self._cooldown_s = cooldown_s
        self._max_cooldown_s = max_cooldown_s
        self._circuits: dict[str, _Circuit] = {}

    async def ask(self, url: str, q: SegmentsQuery, scope: InternalScope | None = None,
                  limit: int | None = None) -> PeerAnswer:
        """Peer ``url``'s part of ``q`` (of ``scope``: by default the partitions it owns, from
        a serving owner): its first ``limit`` rows (None: all) and its total; raises
        PeerUnavailable."""
        circuit = self._circuit(url)
        now = time.monotonic()
        if now < circuit.open_until or circuit.probing:
            wait = max(circuit.open_until - now, 0.0)
            raise PeerUnavailable(f"worker {url} is unreachable (retrying it in {wait:.1f}s)",
                                  max(RETRY_AFTER_S, math.ceil(wait)))
        circuit.probing = circuit.failures > 0
        try:
            answer = await self._get(url, q, scope, limit)
        except PeerUnavailable:
            self._failed(circuit)
            raise
        except ServiceUnavailable:  # it answered (not ready): reachable
            circuit.failures = 0
            raise
        finally:
            circuit.probing = False
        circuit.failures = 0
        return answer

    def is_open(self, url: str) -> bool:
        circuit = self._circuits.get(url)
        return circuit is not None and time.monotonic() < circuit.open_until

    async def _get(self, url: str, q: SegmentsQuery, scope: InternalScope | None,
                   limit: int | None) -> PeerAnswer:
        params = {"program_id": q.program_id, "segment_type": q.segment_type,
                  "segment_basis": q.segment_basis, "min_weight": repr(q.min_weight)}
        if limit is not None:
            limit = min(limit, MAX_LIMIT)
            params["limit"] = str(limit)
        asked = None
        if scope is not None:
            if scope.partitions is not None:
                params["partitions"] = ",".join(map(str, sorted(scope.partitions)))
                asked = scope.partitions
            if scope.any:
                params["any"] = "true"
        headers = (None if self._cluster is None else
                   self._cluster.request_headers(url, INTERNAL_ROUTE, params))
        try:
            async with self._session.get(f"{url}{INTERNAL_ROUTE}", params=params,
                                         headers=headers, timeout=self._timeout) as resp:
                if resp.status in (401, 403):
                    raise PeerUnavailable(
                        f"worker {url} refused this worker's request ({resp.status}: a "
                        "different SEGMENTS_CLUSTER_SECRET, clocks more than 30 s apart, or "
                        "a retried request)", RETRY_AFTER_S)
                if resp.status != 200:
                    # It answered: reachable, just not ready (rebalancing); no circuit change.
                    raise ServiceUnavailable(f"worker {url} is not ready ({resp.status})",
                                             RETRY_AFTER_S)
                limited = limit is not None and resp.headers.get(LIMIT_HEADER) == str(limit)
                body = await _read_bounded(resp, answer_bound(
                    limit if limited else None, self._max_answer_bytes))
                signature = resp.headers.get(SIGNATURE_HEADER)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PeerUnavailable(f"worker {url} did not answer: {exc!r}",
                                  RETRY_AFTER_S) from None
        if headers is not None and self._cluster is not None and not (
                self._cluster.verify_answer(headers[NONCE_HEADER], body, signature)):
            raise PeerUnavailable(f"worker {url} gave an answer not signed with the cluster "
                                  "secret", RETRY_AFTER_S)
        try:
            return parse_answer(body, q, self._total_partitions, asked, limit)
        except BadAnswer as exc:
            raise PeerUnavailable(f"worker {url} gave an invalid answer: {exc}",
                                  RETRY_AFTER_S) from None

    def _circuit(self, url: str) -> _Circuit:
        circuit = self._circuits.get(url)
        if circuit is None:
            if len(self._circuits) >= 1024:  # URLs of workers long gone
                self._circuits = {u: c for u, c in self._circuits.items() if c.failures}
            circuit = self._circuits[url] = _Circuit()
        return circuit

    def _failed(self, circuit: _Circuit) -> None:
        circuit.failures += 1
        cooldown = min(self._max_cooldown_s, self._cooldown_s * 2 ** (circuit.failures - 1))
        circuit.open_until = time.monotonic() + cooldown


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if resp.content_length is not None:
        if resp.content_length > limit:
            raise aiohttp.ClientPayloadError(f"answer of {resp.content_length} bytes")
        return await resp.read()
    body = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > limit:
            raise aiohttp.ClientPayloadError(f"answer of more than {limit} bytes")
    return bytes(body)
