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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import orjson
from prometheus_client import Counter

from api.answers import Answer
from api.backend import SegmentsBackend
from api.cache import AnswerCache
from api.flights import Flights
from api.params import SegmentsQuery
from streams.domain.rows import SegmentRow

PREFIX_EXTRA_MAX = 1_000  # rows a miss computes beyond twice its page's end, at most

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

    async def cached(self, q: SegmentsQuery, limit: int) -> Served | None:
        """The query's cached prefix when it holds its first ``limit`` rows."""
        raw = await self._cache().get(prefix_key(q))
        served = None if raw is None else unpack_prefix(raw)
        return served if served is not None and served.answer.covers(limit) else None

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
            if not answer.stale:
                await self._cache().set(prefix_key(q), pack_prefix(answer, ends),
                                        self._backend.cache_ttl_s)
            return Served(answer, ends)

        return await self._flights.run(key, limit, fresh, work)

    async def stop(self) -> None:
        await self._flights.stop()
