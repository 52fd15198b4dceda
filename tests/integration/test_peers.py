"""The fan-out client (api/fanout.py) against real HTTP servers on loopback that behave as a
broken or hostile worker would: every failure is a 503 with Retry-After for the asker, and a
peer that hangs or refuses connections is given up fast (circuit breaker), then tried again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from api.errors import ServiceUnavailable
from api.fanout import PeerClient, PeerUnavailable
from api.params import SegmentsQuery
from streams.tools.kafka_local import free_port

pytestmark = pytest.mark.integration

Q = SegmentsQuery(program_id="p1", segment_type="growth", segment_basis="label", min_weight=0.5)
GOOD = {"items": [["growth", "label", "l1", "view", "Label 1", 4, 0.8]], "partitions": [1, 3]}


class FakePeer:
    """A worker's internal endpoint that answers as ``mode`` says."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.mode == "hang":
            await asyncio.sleep(30)
        if self.mode == "malformed":
            return web.Response(body=b'{"items": [["growth", "label", "l1", "view", "x", '
                                     b'1000000, 0.9]], "partitions": [99]}')
        if self.mode == "garbage":
            return web.Response(body=b"\x00\xff not json")
        if self.mode == "huge":
            resp = web.StreamResponse()  # chunked: no Content-Length to refuse it by
            await resp.prepare(request)
            for _ in range(64):
                await resp.write(b" " * 65536)
            await resp.write_eof()
            return resp
        if self.mode == "not-ready":
            return web.Response(status=503, body=b'{"detail": "rebalancing"}')
        return web.Response(body=orjson.dumps(GOOD), content_type="application/json")

    async def start(self) -> FakePeer:
        app = web.Application()
        app.router.add_get("/internal/segments", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def peer() -> AsyncIterator[FakePeer]:
    fake = await FakePeer().start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.mark.asyncio(loop_scope="session")
async def test_a_valid_answer_is_merged(peer: FakePeer, session: aiohttp.ClientSession) -> None:
    answer = await PeerClient(session, 8).ask(peer.url, Q)
    assert [msgspec.structs.astuple(r) for r in answer.rows] == [tuple(GOOD["items"][0])]
    assert answer.partitions == [1, 3]


@pytest.mark.parametrize("mode", ["malformed", "garbage", "huge"])
@pytest.mark.asyncio(loop_scope="session")
async def test_a_bad_answer_is_a_503(peer: FakePeer, session: aiohttp.ClientSession,
                                     mode: str) -> None:
    peer.mode = mode
    client = PeerClient(session, 8, max_answer_bytes=1 << 20)
    with pytest.raises(PeerUnavailable) as err:
        await client.ask(peer.url, Q)
    assert err.value.retry_after_s >= 1


@pytest.mark.asyncio(loop_scope="session")
async def test_a_peer_that_is_not_ready_is_a_503_and_stays_reachable(
        peer: FakePeer, session: aiohttp.ClientSession) -> None:
    peer.mode = "not-ready"
    client = PeerClient(session, 8)
    for _ in range(3):
        with pytest.raises(ServiceUnavailable) as err:
            await client.ask(peer.url, Q)
        assert not isinstance(err.value, PeerUnavailable)
    assert not client.is_open(peer.url) and peer.requests == 3


@pytest.mark.asyncio(loop_scope="session")
async def test_a_hanging_peer_is_given_up_once_then_fast(peer: FakePeer,
                                                         session: aiohttp.ClientSession) -> None:
    peer.mode = "hang"
    client = PeerClient(session, 8, timeout_s=0.5, cooldown_s=1.0)
    started = time.monotonic()
    with pytest.raises(PeerUnavailable):
        await client.ask(peer.url, Q)
    first = time.monotonic() - started
    assert first < 5.0  # the client's timeout, not the peer's 30 s
    asked = peer.requests
    fast = []
    for _ in range(20):  # the circuit is open: no request reaches the peer
        t = time.monotonic()
        with pytest.raises(PeerUnavailable):
            await client.ask(peer.url, Q)
        fast.append(time.monotonic() - t)
    assert peer.requests == asked
    assert max(fast) < first
    peer.mode = "ok"  # it comes back: after the cool-down one request finds out
    await asyncio.sleep(1.1)
    answer = await client.ask(peer.url, Q)
    assert answer.rows and not client.is_open(peer.url)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_refused_connection_opens_the_circuit_at_once(
        session: aiohttp.ClientSession) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    client = PeerClient(session, 8, cooldown_s=5.0)
    with pytest.raises(PeerUnavailable):
        await client.ask(url, Q)
    assert client.is_open(url)
    with pytest.raises(PeerUnavailable) as err:
        await client.ask(url, Q)
    assert err.value.retry_after_s >= 4
