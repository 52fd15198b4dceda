"""The HTTP API's metrics (contract section 9), added to the worker's registry: request
durations by route and status, cache hits and misses, stale answers, answers computed and
requests coalesced into another's computation, open streams. Routes are
the app's own (a bounded set; anything else is counted as ``other``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.durations = Histogram(
            "segments_http_request_duration_seconds", "HTTP requests, by route and status",
            ["route", "status"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))
        cache = Counter("segments_cache_requests", "GET /segments answers looked up in the "
                        "cache, by result", ["result"], registry=registry)
        self.cache_hits = cache.labels("hit")
        self.cache_misses = cache.labels("miss")
        stale = Counter("segments_stale_answers", "GET /segments answers flagged "
                        "Segments-Stale, by where the parts not from serving owners came from "
                        "(copies: standbys or moving partitions; last_answer: the query's last "
                        "answer)", ["source"], registry=registry)
        self.stale_answers = stale.labels("copies")
        self.last_answers = stale.labels("last_answer")
        self.query_computations = Counter(
            "segments_query_computations", "GET /segments and live stream answers computed "
            "from the tables (each a fan-out to the owners)", registry=registry)
        self.query_coalesced = Counter(
            "segments_query_coalesced", "Requests answered by an identical query's computation "
            "that was already under way or queued (single flight)", registry=registry)
        self.stream_clients = Gauge("segments_stream_clients",
                                    "Open GET /segments/stream connections", registry=registry)

    def middleware(self) -> Middleware:
        durations = self.durations

        @web.middleware
        async def timed(request: web.Request, handler: _Handler) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                resource = request.match_info.route.resource
                route = resource.canonical if resource is not None else "other"
                if route != "/segments/stream":  # a stream lasts as long as its client
                    durations.labels(route, str(status)).observe(
                        time.perf_counter() - started)

        return timed
