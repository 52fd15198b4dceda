"""The HTTP API of one worker: an aiohttp app factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import resources

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from api import answers, views
from api.auth import SCHEMAS_ROUTE, ClusterAuth, auth_middleware
from api.backend import SegmentsBackend
from api.cache import make_cache
from api.errors import error_middleware
from api.fanout import PeerClient
from api.keys import KeyRing
from api.metrics import ApiMetrics
from api.openapi import build_openapi
from api.params import SegmentsQuery
from api.prefixes import QueryRunner
from api.stream import StreamHub

STATIC = resources.files("api").joinpath("static")


def create_web_app(backend: SegmentsBackend, redis_url: str | None, *,
                   namespace: str = "segment-stream", peer_timeout_s: float = 2.0,
                   registry: CollectorRegistry | None = None,
                   stream_interval_s: float = 1.0, stream_max_clients: int = 1000,
                   keys: KeyRing | None = None, cluster: ClusterAuth | None = None
                   ) -> web.Application:
    """``namespace``: the deployment's app id (the prefix of its cache keys); ``registry``:
    the worker's metrics, which the API adds its own to and serves at /metrics; ``keys``: the
    API keys asked for (None: none); ``cluster``: the workers' shared secret (api/auth.py)."""
    registry = registry if registry is not None else CollectorRegistry()
    api_metrics = ApiMetrics(registry)
    app = web.Application(middlewares=[api_metrics.middleware(), error_middleware,
                                       auth_middleware(keys, cluster, views.PAGE)])
    app[answers.BACKEND] = backend
    app[views.OPENAPI] = orjson.dumps(build_openapi(keys_required=keys is not None))
    app[views.API_METRICS] = api_metrics
    app[views.REGISTRY] = registry
    if cluster is not None:
        app[views.CLUSTER] = cluster

    async def compute(q: SegmentsQuery, limit: int | None) -> answers.Answer:
        return await answers.compute(app, q, limit)

    queries = app[views.QUERIES] = QueryRunner(
        compute, backend, lambda: app[views.CACHE], api_metrics.query_computations,
        api_metrics.query_coalesced)

    async def stream_answer(q: SegmentsQuery) -> answers.Answer:
        return (await queries.answer(q, True, q.size)).answer

    app[views.STREAMS] = StreamHub(stream_answer, stream_interval_s, stream_max_clients,
                                   api_metrics.stream_clients.set)

    async def resources_(app: web.Application) -> AsyncIterator[None]:
        app[views.CACHE] = make_cache(redis_url, namespace)
        async with aiohttp.ClientSession() as session:
            app[answers.PEERS] = PeerClient(session, backend.total_partitions, peer_timeout_s,
                                            cluster=cluster)
            yield
            await app[views.STREAMS].stop()
            await queries.stop()
        await app[views.CACHE].close()

    app.cleanup_ctx.append(resources_)
    app.router.add_get("/segments", views.get_segments)
    app.router.add_get("/segments/stream", views.stream_segments)
    app.router.add_get("/internal/segments", views.internal_segments)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/livez", views.livez)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/openapi.json", views.openapi_json)
    app.router.add_get("/metrics", views.metrics)
    app.router.add_get(SCHEMAS_ROUTE, views.json_schema)
    app.router.add_get("/", views.page)
    app.router.add_static("/static/", str(STATIC), append_version=True)
    return app
