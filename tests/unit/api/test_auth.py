"""Who may ask what: API keys on the public routes, the cluster secret between workers
(api/auth.py), driven through the real aiohttp app in memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, unused_port

from api.app import create_web_app
from api.auth import NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, ClusterAuth
from api.fanout import PeerClient, PeerUnavailable
from api.keys import KeyRing, add_key, revoke_key
from api.params import SegmentsQuery
from tests.unit.api.test_answers import FakeWorker

SECRET = "a shared secret of the cluster"
P = {"program-id": "p"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Path, dict[str, str]]]:
    path = tmp_path / "keys.json"
    keys = {"p": add_key(path, "p-reader", ["p"]), "other": add_key(path, "other", ["q"]),
            "all": add_key(path, "ops", ["*"])}
    port = unused_port()
    worker = FakeWorker(f"http://127.0.0.1:{port}", {0, 1, 2, 3})
    worker.cluster = {worker.url: worker}
    app = create_web_app(worker, None, keys=KeyRing(path),
                         cluster=ClusterAuth(SECRET, worker.url))
    client = TestClient(TestServer(app, port=port))
    await client.start_server()
    try:
        yield client, path, keys
    finally:
        await client.close()


async def test_segments_need_a_key_that_covers_the_program(secured: Any) -> None:
    client, _, keys = secured
    missing = await client.get("/segments", headers=P)
    assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    unknown = await client.get("/segments", headers=P | bearer("sgk_nope"))
    assert unknown.status == 401 and 'error="invalid_token"' in unknown.headers[
        "WWW-Authenticate"]
    assert (await client.get("/segments", headers=P | {"Authorization": "Basic eDp5"})
            ).status == 401
    assert (await client.get("/segments", headers=P | bearer(keys["other"]))).status == 403
    assert (await client.get("/segments", headers=P | bearer(keys["p"]))).status == 200
    assert (await client.get("/segments", headers=P | bearer(keys["all"]))).status == 200
    for path in ("/segments", "/metrics", "/"):
        assert (await client.head(path, headers=P)).status == 401, path


async def test_the_stream_the_page_and_the_metrics_are_protected(secured: Any) -> None:
    client, _, keys = secured
    stream = "/segments/stream?program_id=p"
    assert (await client.get(stream)).status == 401
    assert (await client.get(stream, headers=bearer(keys["other"]))).status == 403
    page = await client.get("/?program_id=p")
    assert page.status == 401 and page.headers["WWW-Authenticate"].startswith("Bearer")
    assert "key-dialog" in await page.text()  # the page itself, which asks for a key
    assert (await client.get("/?program_id=p", headers=bearer(keys["other"]))).status == 403
    assert (await client.get("/?program_id=p", headers=bearer(keys["p"]))).status == 200
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers=bearer(keys["p"]))).status == 403
    assert (await client.get("/metrics", headers=bearer(keys["all"]))).status == 200
    for open_route in ("/healthz", "/livez", "/readyz", "/openapi.json", "/static/app.js"):
        assert (await client.get(open_route)).status == 200, open_route
    spec = await (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert "401" in spec["paths"]["/segments"]["get"]["responses"]


async def test_a_revoked_key_is_refused_at_its_next_request(secured: Any) -> None:
    client, path, keys = secured
    assert (await client.get("/segments", headers=P | bearer(keys["p"]))).status == 200
    revoke_key(path, "p-reader")
    assert (await client.get("/segments", headers=P | bearer(keys["p"]))).status == 401
    path.write_text("{not json")  # half-written by hand: no key until it is fixed
    assert (await client.get("/segments", headers=P | bearer(keys["all"]))).status == 401


def internal_query() -> dict[str, str]:
    return {"program_id": "p", "segment_type": "growth", "segment_basis": "labels",
            "min_weight": "0.5"}


async def test_internal_requests_need_the_cluster_signature(secured: Any) -> None:
    client, _, _ = secured
    url = f"http://127.0.0.1:{client.port}"
    query = internal_query()
    assert (await client.get("/internal/segments", params=query)).status == 401
    signed = ClusterAuth(SECRET, "http://elsewhere").request_headers(
        url, "/internal/segments", query)
    answer = await client.get("/internal/segments", params=query, headers=signed)
    assert answer.status == 200
    body = await answer.read()
    assert ClusterAuth(SECRET, "x").verify_answer(signed[NONCE_HEADER], body,
                                                  answer.headers[SIGNATURE_HEADER])
    assert not ClusterAuth("another secret, same length", "x").verify_answer(
        signed[NONCE_HEADER], body, answer.headers[SIGNATURE_HEADER])
    replayed = await client.get("/internal/segments", params=query, headers=signed)
    assert replayed.status == 401 and "replayed" in await replayed.text()
    wrong_secret = ClusterAuth("not the cluster's secret", "x").request_headers(
        url, "/internal/segments", query)
    assert (await client.get("/internal/segments", params=query, headers=wrong_secret)
            ).status == 401
    for_another = ClusterAuth(SECRET, "x").request_headers(
        "http://127.0.0.1:1", "/internal/segments", query)  # forwarded by whoever got it
    assert (await client.get("/internal/segments", params=query, headers=for_another)
            ).status == 401
    altered = ClusterAuth(SECRET, "x").request_headers(url, "/internal/segments", query)
    assert (await client.get("/internal/segments", params=query | {"min_weight": "0"},
                             headers=altered)).status == 401
    old = ClusterAuth(SECRET, "x", clock=lambda: 1_000_000.0).request_headers(
        url, "/internal/segments", query)
    assert (await client.get("/internal/segments", params=query, headers=old)).status == 401
    assert old[TIMESTAMP_HEADER] == "1000000000"


async def raw_get(port: int, path: str, headers: bytes) -> int:
    """The status of a GET sent as raw bytes (headers no HTTP client would send)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 + headers + b"\r\n")
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


async def test_malformed_signature_headers_are_a_401_not_a_500(secured: Any) -> None:
    client, _, _ = secured
    path = "/internal/segments?" + urlencode(internal_query())
    good = ClusterAuth(SECRET, "x").request_headers(
        f"http://127.0.0.1:{client.port}", "/internal/segments", internal_query())
    for name, value in ((SIGNATURE_HEADER, "é" * 64), (SIGNATURE_HEADER, "G" * 64),
                        (NONCE_HEADER, "\udcff" * 20), (NONCE_HEADER, "٣" * 32),
                        (TIMESTAMP_HEADER, "²³"), (TIMESTAMP_HEADER, "9" * 40)):
        headers = good | {name: value}
        raw = b"".join(k.encode() + b": " + v.encode("utf-8", "surrogateescape") + b"\r\n"
                       for k, v in headers.items())
        assert await raw_get(client.port, path, raw) == 401, (name, value)


async def test_a_stream_ends_when_its_key_is_revoked(secured: Any) -> None:
    client, path, keys = secured
    response = await client.get("/segments/stream?program_id=p", headers=bearer(keys["p"]))
    assert response.status == 200
    assert (await response.content.readline()).startswith(b"event: snapshot")
    revoke_key(path, "p-reader")
    started = time.monotonic()
    await asyncio.wait_for(response.content.read(), 10)  # until the server ends it
    assert time.monotonic() - started < 5
    response.release()


async def forged_peer(answer: bytes, signature: str | None) -> TestServer:
    async def handler(request: web.Request) -> web.Response:
        headers = {SIGNATURE_HEADER: signature} if signature else None
        return web.Response(body=answer, content_type="application/json", headers=headers)

    app = web.Application()
    app.router.add_get("/internal/segments", handler)
    server = TestServer(app)
    await server.start_server()
    return server


async def test_rows_of_a_peer_without_the_secret_are_never_merged() -> None:
    forged = orjson.dumps({"items": [["growth", "label", "b0", "view", "n", 1_000_000, 0.9]],
                           "partitions": [0], "lag": 0})
    cluster = ClusterAuth(SECRET, "http://me")
    q = SegmentsQuery(program_id="p", min_weight=0.5)
    for signature in (None, "0" * 64,
                      ClusterAuth("a guessed secret, not ours", "x").answer_signature(
                          "n" * 32, forged)):
        server = await forged_peer(forged, signature)
        try:
            async with aiohttp.ClientSession() as session:
                peers = PeerClient(session, 4, cluster=cluster)
                with pytest.raises(PeerUnavailable, match="not signed"):
                    await peers.ask(str(server.make_url("")).rstrip("/"), q)
                unsigned = PeerClient(session, 4)  # (no secret: today's trust, for contrast)
                answer = await unsigned.ask(str(server.make_url("")).rstrip("/"), q)
                assert answer.rows[0].user_count == 1_000_000
        finally:
            await server.close()


async def test_workers_sharing_the_secret_answer_each_other(tmp_path: Path) -> None:
    port = unused_port()
    worker = FakeWorker(f"http://127.0.0.1:{port}", {0, 1})
    server = TestServer(create_web_app(worker, None, cluster=ClusterAuth(SECRET, worker.url)),
                        port=port)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            peers = PeerClient(session, 4, cluster=ClusterAuth(SECRET, "http://asker"))
            answer = await peers.ask(worker.url, SegmentsQuery(program_id="p", min_weight=0.5))
            assert answer.partitions == [0, 1]
            strangers = PeerClient(session, 4,
                                   cluster=ClusterAuth("a different secret here", "http://x"))
            with pytest.raises(PeerUnavailable, match="CLUSTER_SECRET"):
                await strangers.ask(worker.url, SegmentsQuery(program_id="p", min_weight=0.5))
    finally:
        await server.close()
