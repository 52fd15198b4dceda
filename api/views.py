"""The HTTP handlers: GET /segments, its live stream, the internal per-worker query their
fan-out uses, /metrics, the probes (/livez, /readyz, /healthz), the live page, /openapi.json
and the topics' JSON Schemas.

Any worker answers for any program (api/answers.py says from where). Every answer says how
fresh it is (``Segments-As-Of``, ``Segments-Lag``) and whether any part of it is not from a
serving owner (``Segments-Stale: true``). Fresh answers are cached for ``cache_ttl_s`` and kept
for ``LAST_ANSWER_KEEP_S`` as the query's last answer: with ``consistency=any``, when some
partition is found nowhere, that last answer is served (stale, its lag grown by every record
that came since).
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

from api.answers import BACKEND, RETRY_AFTER_S, Answer
from api.auth import ClusterAuth, authorize, sign_answer, still_authorized
from api.cache import AnswerCache
from api.errors import JSON, ServiceUnavailable, json_response
from api.fanout import LIMIT_HEADER
from api.metrics import ApiMetrics
from api.params import (
    SegmentsQuery,
    parse_internal_request,
    parse_internal_scope,
    parse_segments_request,
    parse_stream_request,
)
from api.prefixes import QueryRunner, Served, prefix_limit
from api.stream import HEARTBEAT, StreamHub, item
from streams.codec.json_schemas import SCHEMAS, schema_bytes

AS_OF_HEADER = "Segments-As-Of"
LAG_HEADER = "Segments-Lag"
STALE_HEADER = "Segments-Stale"
LAST_ANSWER_KEEP_S = 600.0

CACHE = web.AppKey("cache", AnswerCache)
OPENAPI = web.AppKey("openapi", bytes)
API_METRICS = web.AppKey("api_metrics", ApiMetrics)
REGISTRY = web.AppKey("registry", CollectorRegistry)
STREAMS = web.AppKey("streams", StreamHub)
CLUSTER = web.AppKey("cluster", ClusterAuth)  # (absent: no cluster secret)
QUERIES = web.AppKey("queries", QueryRunner)
HEARTBEAT_S = 10.0  # the contract asks for a comment line at least every 15 s
KEY_CHECK_S = 1.0
STREAM_SEND_BUFFER = 256 * 1024

_encode = msgspec.json.Encoder().encode  # rows are structs, which orjson does not encode
PAGE = resources.files("api").joinpath("static/index.html").read_bytes()
SCHEMA_JSON = "application/schema+json"


def cache_key(q: SegmentsQuery) -> str:
    """One cache entry per answer (query, threshold, page and size): a hit is served as the
    stored bytes, with no parsing or re-rendering. (Both consistencies share it: only answers
    from owners are cached.)"""
    return orjson.dumps([q.program_id, q.segment_type, q.segment_basis, q.min_weight,
                         str(q.page), q.size]).decode()


def render(answer: Answer, q: SegmentsQuery) -> bytes:
    body = {"items": [item(r, q.min_weight) for r in answer.page(q.page, q.size)],
            "total": answer.total, "page": q.page, "size": q.size}
    try:
        return orjson.dumps(body)
    except TypeError:  # a page number beyond 64 bits: the stdlib copes
        return json.dumps(body, allow_nan=False).encode()


async def get_segments(request: web.Request) -> web.Response:
    q = parse_segments_request(request.query, request.headers)
    authorize(request, q.program_id)
    app = request.app
    cache = app[CACHE]
    counters = app[API_METRICS]
    backend = app[BACKEND]
    queries = app[QUERIES]
    key = cache_key(q)
    if not q.force_refresh:
        cached = await cache.get(key)
        entry = None if cached is None else unpack(cached)
        if entry is not None:
            counters.cache_hits.inc()
            queries.refresh_ahead(q, entry.as_of_ms)
            return _answer_response(entry.body, entry.as_of_ms, entry.lag, stale=False)
        prefix = await queries.cached(q, q.page * q.size)  # a page inside a cached prefix
        if prefix is not None:
            counters.cache_hits.inc()
            body = render(prefix.answer, q)
            await _remember(app, key, prefix, body)
            return _answer_response(body, prefix.answer.as_of_ms, prefix.answer.lag,
                                    stale=False)
        counters.cache_misses.inc()
    try:
        served = await queries.answer(q, q.force_refresh, q.page * q.size if q.force_refresh
                                      else prefix_limit(q.page, q.size))
    except ServiceUnavailable:
        if q.consistency == "strict":
            raise
        last = await cache.get_last(key)
        entry = None if last is None else unpack(last)
        if entry is None:
            raise
        # Every record that reached the input since the answer is one it does not reflect.
        now = await backend.input_ends(fresh=True)
        since = now - entry.ends if now is not None and entry.ends >= 0 else 0
        counters.last_answers.inc()
        return _answer_response(entry.body, entry.as_of_ms, entry.lag + max(0, since),
                                stale=True)
    answer = served.answer
    body = render(answer, q)
    if answer.stale:
        counters.stale_answers.inc()
    else:
        await _remember(app, key, served, body)
    return _answer_response(body, answer.as_of_ms, answer.lag, answer.stale)


async def _remember(app: web.Application, key: str, served: Served, body: bytes) -> None:
    """Cache a page's body (one from a cached prefix until the prefix's own expiry, so that no
    answer outlives the TTL from when it was computed) and keep it as its last answer."""
    ttl_s = app[BACKEND].cache_ttl_s
    if served.cached:
        ttl_s = min(ttl_s, ttl_s - (time.time() * 1000 - served.answer.as_of_ms) / 1000)
    await app[CACHE].set(key, pack(served.answer, body, served.ends), max(0.0, ttl_s),
                         LAST_ANSWER_KEEP_S)


@dataclass(frozen=True, slots=True)
class Cached:
    as_of_ms: int
    lag: int
    ends: int  # the input topics' end offsets summed before the answer (-1: unknown)
    body: bytes


def pack(answer: Answer, body: bytes, ends: int | None) -> bytes:
    """A cached answer: its freshness, then its body."""
    return b"%d %d %d\n" % (answer.as_of_ms, answer.lag, -1 if ends is None else ends) + body


def unpack(cached: bytes) -> Cached | None:
    """None for an entry this version did not write (an older one's: ``as_of lag``)."""
    head, _, body = cached.partition(b"\n")
    fields = head.split(b" ")
    if len(fields) != 3:
        return None
    try:
        as_of_ms, lag, ends = map(int, fields)
    except ValueError:
        return None
    return Cached(as_of_ms, lag, ends, body)


def _answer_response(body: bytes, as_of_ms: int, lag: int, stale: bool) -> web.Response:
    headers = {AS_OF_HEADER: str(as_of_ms), LAG_HEADER: str(lag)}
    if stale:
        headers[STALE_HEADER] = "true"
    return web.Response(body=body, content_type=JSON, headers=headers)


async def internal_segments(request: web.Request) -> web.Response:
    """A worker's own part of an answer, for the fan-out of another worker: by default every
    partition it serves (503 unless it serves); with ``any=true``, whatever it holds of
    ``partitions``, flagged stale when not from it serving as their owner."""
    q = parse_internal_request(request.query)
    backend = request.app[BACKEND]
    scope = parse_internal_scope(request.query, backend.total_partitions)
    limit = scope.limit
    if not scope.any:
        if not backend.is_ready():
            raise ServiceUnavailable("worker is rebalancing or recovering", RETRY_AFTER_S)
        if scope.partitions is None:
            items, total, partitions = backend.local_top(q.program_id, q.segment_type,
                                                         q.segment_basis, q.min_weight, limit)
            answer = {"items": items, "partitions": partitions, "lag": backend.lag()}
            if limit is not None:  # (only then: an older worker's decoder refuses the field)
                answer["total"] = total
            return sign_answer(request, _peer_response(answer, limit), request.app.get(CLUSTER))
        wanted = sorted(scope.partitions & set(backend.partitions()))
    else:
        wanted = sorted(range(backend.total_partitions) if scope.partitions is None
                        else scope.partitions)
    held = await backend.held_query(q.program_id, q.segment_type, q.segment_basis,
                                    q.min_weight, wanted, limit)
    if held.stale and not scope.any:  # (it stopped serving meanwhile)
        raise ServiceUnavailable("worker is rebalancing or recovering", RETRY_AFTER_S)
    body = {"items": held.rows, "partitions": held.partitions, "lag": held.lag,
            "stale": held.stale}
    if limit is not None:
        body["total"] = held.total
    return sign_answer(request, _peer_response(body, limit), request.app.get(CLUSTER))


def _peer_response(answer: dict[str, object], limit: int | None) -> web.Response:
    headers = None if limit is None else {LIMIT_HEADER: str(limit)}
    return web.Response(body=_encode(answer), content_type=JSON, headers=headers)


async def stream_segments(request: web.Request) -> web.StreamResponse:
    """Server-sent events of a query's top segments (api/stream.py)."""
    q = parse_stream_request(request.query, request.headers)
    authorize(request, q.program_id)
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
        loop = asyncio.get_running_loop()
        beat_at = loop.time() + HEARTBEAT_S
        while True:
            try:
                data = await asyncio.wait_for(client.queue.get(), KEY_CHECK_S)
            except TimeoutError:
                data = b""
            if data is None or client.dropped or not still_authorized(request, q.program_id):
                break  # (a key revoked or narrowed ends its streams within KEY_CHECK_S)
            if not data:
                if loop.time() < beat_at:
                    continue
                data = HEARTBEAT
            beat_at = loop.time() + HEARTBEAT_S
            await response.write(data)
    except ConnectionError:  # the client went away (or was cut off)
        pass
    finally:
        hub.close(client)
    return response


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def livez(request: web.Request) -> web.Response:
    """Liveness: answered at all, the event loop turns (no other condition)."""
    return web.Response(body=b'{"live":true}', content_type=JSON)


async def readyz(request: web.Request) -> web.Response:
    """Readiness: whether GET /segments with consistency=any can be answered here."""
    backend = request.app[BACKEND]
    reason = backend.readiness()
    body: dict[str, object] = {"ready": reason is None, "serving": backend.is_ready()}
    rebuilding = backend.rebuilding()
    if rebuilding:
        body["rebuilding"] = rebuilding
    if reason is None:
        return json_response(body)
    return json_response(body | {"reason": reason}, status=503,
                         headers={"Retry-After": str(RETRY_AFTER_S)})


async def healthz(request: web.Request) -> web.Response:
    """Readiness as it was before /readyz (ready = serving every partition assigned to it now,
    none still being rebuilt), and what the worker holds: O(partitions), from counters kept as
    the states change."""
    backend = request.app[BACKEND]
    rebuilding = backend.rebuilding()
    ready = backend.is_ready() and not rebuilding
    body: dict[str, object] = {
        "ready": ready, "partitions": backend.partitions(),
        "recommendations": backend.recommendations(), "standbys": backend.standbys()}
    if rebuilding:
        body["rebuilding"] = rebuilding
    return json_response(body, status=200 if ready else 503,
                         headers=None if ready else {"Retry-After": str(RETRY_AFTER_S)})


async def page(request: web.Request) -> web.Response:
    """The live page (api/static/): its state lives in the URL."""
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type=JSON)


async def json_schema(request: web.Request) -> web.Response:
    """``GET /schemas/{input,change,count}.json``: the records' JSON Schemas (contract 4c)."""
    stem, dot, ext = request.match_info["name"].rpartition(".")
    if not dot or ext != "json" or stem not in SCHEMAS:
        return json_response({"detail": "no such schema; there are "
                              + ", ".join(f"/schemas/{n}.json" for n in SCHEMAS)}, status=404)
    return web.Response(body=schema_bytes(stem), content_type=SCHEMA_JSON,
                        headers={"Cache-Control": "public, max-age=300"})
