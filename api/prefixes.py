"""Answers of `GET /segments` as whole sorted prefixes: computed once per query at a time, and
cached so that the next pages are hits.

A miss computes the query's first ``prefix_limit(page, size)`` rows (twice the rows up to the
page asked for, at most ``PREFIX_EXTRA_MAX`` more) and caches them with the total; any page
inside that prefix, of any size, is then served from it until it expires (the cache's TTL from
when it was computed). ``force_refresh`` computes exactly the rows up to its page (``page x
size``: what each peer sends) and replaces the prefix. Identical queries computed at once share
one computation (api/flights.py).

Cache keys, each under the deployment's prefix ``<SEGMENTS_APP_ID>:`` (api/cache.py):
``["<program>","<type>","<basis>",<min_weight>,"<page>",<size>]`` one page's body (views);
``last:`` + that key, the page's last answer (kept 10 minutes, for failover);
``top:["<program>","<type>","<basis>",<min_weight>]`` the query's sorted prefix: a line
``<as_of_ms> <lag> <input ends or -1> <total>`` then its rows as a JSON array of arrays.
Only answers not stale are cached.

Refresh-ahead: a cached answer read when older than ``REFRESH_AHEAD`` of the TTL has its
query's prefix recomputed in the background (once per prefix), so that steady readers find a
new prefix before the old one expires instead of waiting for a computation; entries still
expire at the TTL, so no answer served is older than it. A prefix read again (same bytes) is
not parsed again (``DECODED_MAX`` kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import orjson
from prometheus_client import Counter

from api.answers import Answer
from api.backend import SegmentsBackend
from api.cache import AnswerCache
from api.errors import ServiceUnavailable
from api.flights import Flights
from api.params import SegmentsQuery
from streams.domain.rows import SegmentRow

PREFIX_EXTRA_MAX = 1_000  # rows a miss computes beyond twice its page's end, at most
REFRESH_AHEAD = 0.5  # part of the TTL after which a read starts a background recomputation
DECODED_MAX = 16  # parsed prefixes kept (each at most a few thousand rows)

_encode = msgspec.json.Encoder().encode
_decode_rows = msgspec.json.Decoder(list[SegmentRow]).decode


def prefix_key(q: SegmentsQuery) -> str:
    return "top:" + orjson.dumps([q.program_id, q.segment_type, q.segment_basis,
                                  q.min_weight]).decode()


def prefix_limit(page: int, size: int) -> int:
    """Rows a miss of page ``page`` computes: its end and as many again, at most
    ``PREFIX_EXTRA_MAX`` more (so the next pages are hits)."""
    end = page * size
    return end + min(end, PREFIX_EXTRA_MAX)


def pack_prefix(answer: Answer, ends: int | None) -> bytes:
    head = b"%d %d %d %d\n" % (answer.as_of_ms, answer.lag, -1 if ends is None else ends,
                               answer.total)
    return head + _encode(answer.rows)


def unpack_prefix(cached: bytes) -> Served | None:
    """None for an entry that is not a prefix this version wrote."""
    head, _, body = cached.partition(b"\n")
    try:
        as_of_ms, lag, ends, total = map(int, head.split(b" "))
        rows = _decode_rows(body)
    except (ValueError, msgspec.DecodeError):
        return None
    if total < len(rows):
        return None
    return Served(Answer(rows, as_of_ms, lag, False, total), None if ends < 0 else ends, True)


@dataclass(frozen=True, slots=True)
class Served:
    """An answer and the input topics' end offsets read before it; ``cached``: from a cached
    prefix, not computed now."""

    answer: Answer
    ends: int | None
    cached: bool = False


Compute = Callable[[SegmentsQuery, int | None], Awaitable[Answer]]


class QueryRunner:
    """Answers from cached prefixes or from one computation per query at a time."""

    def __init__(self, compute: Compute, backend: SegmentsBackend,
                 cache: Callable[[], AnswerCache], computations: Counter,
                 coalesced: Counter) -> None:
        self._compute = compute
        self._backend = backend
        self._cache = cache
        self._computations = computations
        self._flights: Flights[Served] = Flights(coalesced.inc)
        self._decoded: OrderedDict[str, tuple[bytes, Served]] = OrderedDict()
        # query -> as_of_ms of the cached prefix a refresh was started for
        self._ahead: dict[tuple[str, str, str, float, str], int] = {}
        # query -> the rows of the prefix it last computed (a refresh computes as many again)
        self._lengths: dict[tuple[str, str, str, float, str], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def cached(self, q: SegmentsQuery, limit: int) -> Served | None:
        """The query's cached prefix when it holds its first ``limit`` rows."""
        key = prefix_key(q)
        raw = await self._cache().get(key)
        if raw is None:
            return None
        memo = self._decoded.get(key)
        if memo is not None and memo[0] == raw:
            served: Served | None = memo[1]
            self._decoded.move_to_end(key)
        else:
            served = unpack_prefix(raw)
            if served is not None:
                self._decoded[key] = (raw, served)
                while len(self._decoded) > DECODED_MAX:
                    self._decoded.popitem(last=False)
        if served is None:
            return None
        self.refresh_ahead(q, served.answer.as_of_ms, len(served.answer.rows))
        return served if served.answer.covers(limit) else None

    def refresh_ahead(self, q: SegmentsQuery, as_of_ms: int, rows: int = 0) -> None:
        """A cached answer of ``q`` computed at ``as_of_ms`` was read: when it is older than
        ``REFRESH_AHEAD`` of the TTL, recompute the query's prefix in the background, once per
        prefix, as long as the one this worker last computed (``rows`` at least): a refresh
        never shortens the prefix that the next pages are read from."""
        ttl_s = self._backend.cache_ttl_s
        if time.time() * 1000 - as_of_ms < REFRESH_AHEAD * ttl_s * 1000:
            return
        key = (q.program_id, q.segment_type, q.segment_basis, q.min_weight, q.consistency)
        started = self._ahead.get(key)
        if started is not None and started >= as_of_ms:
            return  # (already started for this prefix or a newer one)
        if len(self._ahead) >= 4096:  # queries no longer read
            self._ahead.clear()
        self._ahead[key] = as_of_ms
        limit = max(rows, self._lengths.get(key, 0), prefix_limit(q.page, q.size))
        task = asyncio.get_running_loop().create_task(self._refresh(q, limit))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, q: SegmentsQuery, limit: int) -> None:
        with contextlib.suppress(ServiceUnavailable):  # (readers see it themselves, if so)
            await self.answer(q, True, limit)

    async def answer(self, q: SegmentsQuery, fresh: bool, limit: int) -> Served:
        """The query's first ``limit`` rows or more. ``fresh``: computed after this call (it
        reflects every event processed before it), else possibly from the cache or from a
        computation already under way."""
        key = (q.program_id, q.segment_type, q.segment_basis, q.min_weight, q.consistency)

        async def work(limit: int | None, fresh: bool) -> Served:
            if not fresh and limit is not None:  # (it may have been cached meanwhile)
                hit = await self.cached(q, limit)
                if hit is not None:
                    return hit
            ends = await self._backend.input_ends()  # (before the answer: later ones not in it)
            self._computations.inc()
            answer = await self._compute(q, limit)
            if limit is not None:
                if len(self._lengths) >= 4096:
                    self._lengths.clear()
                self._lengths[key] = limit
            if not answer.stale:
                await self._cache().set(prefix_key(q), pack_prefix(answer, ends),
                                        self._backend.cache_ttl_s)
            return Served(answer, ends)

        return await self._flights.run(key, limit, fresh, work)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flights.stop()
