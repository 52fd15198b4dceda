"""The aiohttp application serving GET /segments, /healthz, /openapi.json and the internal
per-worker query that the fan-out uses.

Any worker answers for any program: it asks every worker that owns partitions (the group
assignment says which), merges, sorts and paginates. An answer is given only when the owners
together cover every partition of the same assignment; otherwise (rebalancing) it is a 503
with Retry-After, never a partial count.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import web

from api.cache import AnswerCache, make_cache
from api.exceptions import RequestValidationError, ServiceUnavailable
from api.fanout import PeerClient
from api.openapi import build_openapi
from api.pagination import paginate
from api.params import SegmentsQuery, parse_internal_request, parse_segments_request
from streams.segments import SegmentStat, contract_order

logger = logging.getLogger(__name__)

JSON = "application/json"
RETRY_AFTER_S = 1


class SegmentsBackend(Protocol):
    """What the HTTP layer needs from a worker."""

    @property
    def self_url(self) -> str: ...
    @property
    def total_partitions(self) -> int: ...
    @property
    def cache_ttl_s(self) -> float: ...
    def is_ready(self) -> bool: ...
    def local_query(self, program_id: str, segment_type: str, segment_basis: str,
                    min_weight: float) -> tuple[list[SegmentStat], list[int]]:
        """Listed segments on this worker's partitions, in contract order (a list the caller
        must not modify), and those partitions."""
    def owners(self) -> dict[str, list[int]]: ...
    def recommendations(self) -> int:
        """Recommendations held on this worker's partitions."""


BACKEND = web.AppKey("backend", SegmentsBackend)
CACHE = web.AppKey("cache", AnswerCache)
SESSION = web.AppKey("session", aiohttp.ClientSession)
PEERS = web.AppKey("peers", PeerClient)
OPENAPI = web.AppKey("openapi", bytes)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON,
                        headers=headers)


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """The one place where errors become HTTP responses."""
    try:
        return await handler(request)
    except RequestValidationError as exc:
        return json_response({"detail": exc.errors}, status=422)
    except ServiceUnavailable as exc:
        return json_response({"detail": str(exc)}, status=503,
                             headers={"Retry-After": str(exc.retry_after_s)})


def _item(stat: SegmentStat | list[Any], min_weight: float) -> dict[str, Any]:
    t, basis, basis_id, action, name, count, strength = stat
    return {"segment_type": t, "segment_basis": basis, "segment_basis_id": basis_id,
            "action_type": action, "name": name, "user_count": count, "strength": strength,
            "min_weight": min_weight}




async def compute(request: web.Request, q: SegmentsQuery) -> list[Any]:
    """All listed segments of the query, sorted, from every partition's owner."""
    backend = request.app[BACKEND]
    if not backend.is_ready():
        raise ServiceUnavailable("worker is rebalancing or recovering", RETRY_AFTER_S)
    owners = backend.owners()
    expected = set(range(backend.total_partitions))
    peers = [url for url, parts in owners.items() if parts and url != backend.self_url]
    local, covered = backend.local_query(q.program_id, q.segment_type, q.segment_basis,
                                         q.min_weight)
    rows: list[Any] = local  # already in contract order; not ours to modify
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


def render(rows: list[Any], q: SegmentsQuery) -> bytes:
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
    return json_response({"items": items, "partitions": partitions})


async def healthz(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    ready = backend.is_ready()
    body = {"ready": ready, "partitions": backend.local_query("", "growth", "label", 1.0)[1],
            "recommendations": backend.recommendations()}
    return json_response(body, status=200 if ready else 503,
                         headers=None if ready else {"Retry-After": str(RETRY_AFTER_S)})


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type=JSON)


def create_web_app(backend: SegmentsBackend, redis_url: str | None, *,
                   namespace: str = "segment-stream", peer_timeout_s: float = 2.0
                   ) -> web.Application:
    """The HTTP API of one worker. ``namespace``: the deployment's app id (its cache keys'
    prefix)."""
    app = web.Application(middlewares=[error_middleware])
    app[BACKEND] = backend
    app[OPENAPI] = orjson.dumps(build_openapi())

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[CACHE] = make_cache(redis_url, namespace)
        app[SESSION] = aiohttp.ClientSession()
        app[PEERS] = PeerClient(app[SESSION], backend.total_partitions, peer_timeout_s)
        yield
        await app[SESSION].close()
        await app[CACHE].close()

    app.cleanup_ctx.append(resources)
    app.router.add_get("/segments", get_segments)
    app.router.add_get("/internal/segments", internal_segments)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.json", openapi_json)
    return app
