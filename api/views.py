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
import socket
import time
from dataclasses import dataclass
from importlib import resources

import msgspec
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.backend import SegmentsBackend
from api.cache import AnswerCache
from api.errors import JSON, ServiceUnavailable, json_response
from api.fanout import PeerClient
from api.metrics import ApiMetrics
from api.pagination import paginate
from api.params import (
    SegmentsQuery,
    parse_internal_request,
    parse_segments_request,
    parse_stream_request,
)
from api.stream import HEARTBEAT, StreamHub, item
from streams.domain.rows import SegmentRow, contract_order

RETRY_AFTER_S = 1
AS_OF_HEADER = "Segments-As-Of"
LAG_HEADER = "Segments-Lag"

BACKEND = web.AppKey("backend", SegmentsBackend)
CACHE = web.AppKey("cache", AnswerCache)
PEERS = web.AppKey("peers", PeerClient)
OPENAPI = web.AppKey("openapi", bytes)
API_METRICS = web.AppKey("api_metrics", ApiMetrics)
REGISTRY = web.AppKey("registry", CollectorRegistry)
STREAMS = web.AppKey("streams", StreamHub)
HEARTBEAT_S = 10.0  # the contract asks for a comment line at least every 15 s
STREAM_SEND_BUFFER = 256 * 1024

_encode = msgspec.json.Encoder().encode  # rows are structs, which orjson does not encode
PAGE = resources.files("api").joinpath("static/index.html").read_bytes()


@dataclass(frozen=True, slots=True)
class Answer:
    """All listed segments of a query, sorted, as of ``as_of_ms``, when ``lag`` records of
    the partitions that fed it were not yet handled."""

    rows: list[SegmentRow]
    as_of_ms: int
    lag: int


async def compute(app: web.Application, q: SegmentsQuery) -> Answer:
    """The query's answer from every partition's owner."""
    backend = app[BACKEND]
    as_of_ms = int(time.time() * 1000)
    if not backend.is_ready():
        raise ServiceUnavailable("worker is rebalancing or recovering", RETRY_AFTER_S)
    owners = backend.owners()
    expected = set(range(backend.total_partitions))
    peers = [url for url, parts in owners.items() if parts and url != backend.self_url]
    local, covered = backend.local_query(q.program_id, q.segment_type, q.segment_basis,
                                         q.min_weight)
    rows = local  # already in contract order; not ours to modify
    lag = backend.lag()
    seen = set(covered)
    if peers:
        rows = list(local)
        ask = app[PEERS].ask
        answers = await asyncio.gather(*(ask(url, q) for url in peers))
        for peer in answers:
            if seen & set(peer.partitions):
                raise ServiceUnavailable("partition owners overlap (rebalancing)", RETRY_AFTER_S)
            rows.extend(peer.rows)
            seen.update(peer.partitions)
            lag += peer.lag
    if seen != expected:
        raise ServiceUnavailable(
            f"{len(expected - seen)} of {len(expected)} partitions have no ready owner",
            RETRY_AFTER_S)
    return Answer(contract_order(rows) if peers else rows, as_of_ms, lag)


def cache_key(q: SegmentsQuery) -> str:
    """One cache entry per answer (query, threshold, page and size): a hit is served as the
    stored bytes, with no parsing or re-rendering."""
    return orjson.dumps([q.program_id, q.segment_type, q.segment_basis, q.min_weight,
                         str(q.page), q.size]).decode()


def render(rows: list[SegmentRow], q: SegmentsQuery) -> bytes:
    page = paginate(rows, q.page, q.size)
    body = {"items": [item(r, q.min_weight) for r in page], "total": len(rows),
            "page": q.page, "size": q.size}
    try:
        return orjson.dumps(body)
    except TypeError:  # a page number beyond 64 bits: the stdlib copes
        return json.dumps(body, allow_nan=False).encode()


async def get_segments(request: web.Request) -> web.Response:
    q = parse_segments_request(request.query, request.headers)
    cache = request.app[CACHE]
    counters = request.app[API_METRICS]
    key = cache_key(q)
    if not q.force_refresh:
        cached = await cache.get(key)
        if cached is not None:
            counters.cache_hits.inc()
            as_of_ms, lag, body = unpack(cached)
            return _answer_response(body, as_of_ms, lag)
        counters.cache_misses.inc()
    answer = await compute(request.app, q)
    body = render(answer.rows, q)
    await cache.set(key, pack(answer, body), request.app[BACKEND].cache_ttl_s)
    return _answer_response(body, answer.as_of_ms, answer.lag)


def pack(answer: Answer, body: bytes) -> bytes:
    """A cached answer: its freshness, then its body."""
    return b"%d %d\n" % (answer.as_of_ms, answer.lag) + body


def unpack(cached: bytes) -> tuple[int, int, bytes]:
    head, _, body = cached.partition(b"\n")
    as_of_ms, _, lag = head.partition(b" ")
    return int(as_of_ms), int(lag), body


def _answer_response(body: bytes, as_of_ms: int, lag: int) -> web.Response:
    return web.Response(body=body, content_type=JSON, headers={
        AS_OF_HEADER: str(as_of_ms), LAG_HEADER: str(lag)})


async def internal_segments(request: web.Request) -> web.Response:
    """A worker's own part of an answer, for the fan-out of another worker."""
    q = parse_internal_request(request.query)
    backend = request.app[BACKEND]
    if not backend.is_ready():
        raise ServiceUnavailable("worker is rebalancing or recovering", RETRY_AFTER_S)
    items, partitions = backend.local_query(q.program_id, q.segment_type, q.segment_basis,
                                            q.min_weight)
    return web.Response(body=_encode({"items": items, "partitions": partitions,
                                      "lag": backend.lag()}), content_type=JSON)


async def stream_segments(request: web.Request) -> web.StreamResponse:
    """Server-sent events of a query's top segments (api/stream.py)."""
    q = parse_stream_request(request.query, request.headers)
    transport = request.transport

    def abort() -> None:
        if transport is not None:
            transport.abort()

    if transport is not None:  # a client that does not read fills little of the kernel's
        sock = transport.get_extra_info("socket")  # memory before it is cut off
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER)
    hub = request.app[STREAMS]
    client, snapshot = await hub.open(q, abort)
    try:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(snapshot)
        while True:
            try:
                data = await asyncio.wait_for(client.queue.get(), HEARTBEAT_S)
            except TimeoutError:
                data = HEARTBEAT
            if data is None or client.dropped:
                break
            await response.write(data)
    except ConnectionError:  # the client went away (or was cut off)
        pass
    finally:
        hub.close(client)
    return response


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    ready = backend.is_ready()
    body = {"ready": ready, "partitions": backend.partitions(),
            "recommendations": backend.recommendations()}
    return json_response(body, status=200 if ready else 503,
                         headers=None if ready else {"Retry-After": str(RETRY_AFTER_S)})


async def page(request: web.Request) -> web.Response:
    """The live page (api/static/): its state lives in the URL."""
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type=JSON)
