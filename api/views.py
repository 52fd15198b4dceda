"""The HTTP handlers: GET /segments, the internal per-worker query its fan-out uses, /healthz
and /openapi.json.

Any worker answers for any program: it asks every worker that owns partitions (the group
assignment says which), merges, sorts and paginates. An answer is given only when the owners
together cover every partition of the same assignment; otherwise (rebalancing) it is a 503
with Retry-After, never a partial count.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import orjson
from aiohttp import web

from api.backend import SegmentsBackend
from api.cache import AnswerCache
from api.errors import JSON, ServiceUnavailable, json_response
from api.fanout import PeerClient
from api.pagination import paginate
from api.params import SegmentsQuery, parse_internal_request, parse_segments_request
from streams.domain.rows import SegmentRow, contract_order

RETRY_AFTER_S = 1

BACKEND = web.AppKey("backend", SegmentsBackend)
CACHE = web.AppKey("cache", AnswerCache)
PEERS = web.AppKey("peers", PeerClient)
OPENAPI = web.AppKey("openapi", bytes)

_encode = msgspec.json.Encoder().encode  # rows are structs, which orjson does not encode


def _item(row: SegmentRow, min_weight: float) -> dict[str, Any]:
    return {"segment_type": row.segment_type, "segment_basis": row.segment_basis,
            "segment_basis_id": row.segment_basis_id, "action_type": row.action_type,
            "name": row.name, "user_count": row.user_count, "strength": row.strength,
            "min_weight": min_weight}


async def compute(request: web.Request, q: SegmentsQuery) -> list[SegmentRow]:
    """All listed segments of the query, sorted, from every partition's owner."""
    backend = request.app[BACKEND]
    if not backend.is_ready():
        raise ServiceUnavailable("worker is rebalancing or recovering", RETRY_AFTER_S)
    owners = backend.owners()
    expected = set(range(backend.total_partitions))
    peers = [url for url, parts in owners.items() if parts and url != backend.self_url]
    local, covered = backend.local_query(q.program_id, q.segment_type, q.segment_basis,
                                         q.min_weight)
    rows = local  # already in contract order; not ours to modify
    seen = set(covered)
    if peers:
        rows = list(local)
        ask = request.app[PEERS].ask
        answers = await asyncio.gather(*(ask(url, q) for url in peers))
        for items, parts in answers:
            if seen & set(parts):
                raise ServiceUnavailable("partition owners overlap (rebalancing)", RETRY_AFTER_S)
            rows.extend(items)
            seen.update(parts)
    if seen != expected:
        raise ServiceUnavailable(
            f"{len(expected - seen)} of {len(expected)} partitions have no ready owner",
            RETRY_AFTER_S)
    return contract_order(rows) if peers else rows


def cache_key(q: SegmentsQuery) -> str:
    """One cache entry per answer (query, threshold, page and size): a hit is served as the
    stored bytes, with no parsing or re-rendering."""
    return orjson.dumps([q.program_id, q.segment_type, q.segment_basis, q.min_weight,
                         str(q.page), q.size]).decode()


def render(rows: list[SegmentRow], q: SegmentsQuery) -> bytes:
    page = paginate(rows, q.page, q.size)
    body = {"items": [_item(r, q.min_weight) for r in page], "total": len(rows),
            "page": q.page, "size": q.size}
    try:
        return orjson.dumps(body)
    except TypeError:  # a page number beyond 64 bits: the stdlib copes
        return json.dumps(body, allow_nan=False).encode()


async def get_segments(request: web.Request) -> web.Response:
    q = parse_segments_request(request.query, request.headers)
    cache = request.app[CACHE]
    key = cache_key(q)
    if not q.force_refresh:
        cached = await cache.get(key)
        if cached is not None:
            return web.Response(body=cached, content_type=JSON)
    body = render(await compute(request, q), q)
    await cache.set(key, body, request.app[BACKEND].cache_ttl_s)
    return web.Response(body=body, content_type=JSON)


async def internal_segments(request: web.Request) -> web.Response:
    """A worker's own part of an answer, for the fan-out of another worker."""
    q = parse_internal_request(request.query)
    backend = request.app[BACKEND]
    if not backend.is_ready():
        raise ServiceUnavailable("worker is rebalancing or recovering", RETRY_AFTER_S)
    items, partitions = backend.local_query(q.program_id, q.segment_type, q.segment_basis,
                                            q.min_weight)
    return web.Response(body=_encode({"items": items, "partitions": partitions}),
                        content_type=JSON)


async def healthz(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    ready = backend.is_ready()
    body = {"ready": ready, "partitions": backend.partitions(),
            "recommendations": backend.recommendations()}
    return json_response(body, status=200 if ready else 503,
                         headers=None if ready else {"Retry-After": str(RETRY_AFTER_S)})


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type=JSON)
