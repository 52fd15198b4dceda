"""The HTTP API of one worker: an aiohttp app factory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import web

from api import views
from api.backend import SegmentsBackend
from api.cache import make_cache
from api.errors import error_middleware
from api.fanout import PeerClient
from api.openapi import build_openapi


def create_web_app(backend: SegmentsBackend, redis_url: str | None, *,
                   namespace: str = "segment-stream", peer_timeout_s: float = 2.0
                   ) -> web.Application:
    """``namespace``: the deployment's app id (the prefix of its cache keys)."""
    app = web.Application(middlewares=[error_middleware])
    app[views.BACKEND] = backend
    app[views.OPENAPI] = orjson.dumps(build_openapi())

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[views.CACHE] = make_cache(redis_url, namespace)
        async with aiohttp.ClientSession() as session:
            app[views.PEERS] = PeerClient(session, backend.total_partitions, peer_timeout_s)
            yield
        await app[views.CACHE].close()

    app.cleanup_ctx.append(resources)
    app.router.add_get("/segments", views.get_segments)
    app.router.add_get("/internal/segments", views.internal_segments)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/openapi.json", views.openapi_json)
    return app
