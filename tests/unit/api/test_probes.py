"""The probes (contract §12) through the real app, query service and partition registry:
/livez answers whatever the phase; /readyz turns 200 once the worker has served (and stays so
while partitions move, answers then coming from elsewhere), 503 with the reason before and
while it stops; /healthz keeps its fields and meaning; all three stay open with API keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_web_app
from api.keys import KeyRing
from streams.domain.events import Event
from streams.runtime.partitions import PartitionRegistry
from streams.runtime.query import Cluster, QueryService


@pytest.fixture
async def probed(tmp_path: Path) -> AsyncIterator[tuple[TestClient, PartitionRegistry]]:
    registry = PartitionRegistry((0.5,))
    query = QueryService(registry, Cluster("http://w1", 2, 5.0), lambda: {"http://w1": [0, 1]})
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": []}')
    # (API keys asked for: the probes stay open all the same)
    client = TestClient(TestServer(create_web_app(query, None, keys=KeyRing(keys))))
    await client.start_server()
    try:
        yield client, registry
    finally:
        await client.close()


async def probe(client: TestClient, path: str) -> tuple[int, Any]:
    resp = await client.get(path)
    return resp.status, await resp.json()


async def test_probes_through_a_workers_phases(probed: Any) -> None:
    client, registry = probed
    assert await probe(client, "/livez") == (200, {"live": True})
    status, body = await probe(client, "/readyz")
    assert status == 503 and body["ready"] is False and body["reason"].startswith("starting")
    assert (await client.get("/readyz")).headers["Retry-After"] == "1"
    assert (await probe(client, "/healthz"))[0] == 503

    registry.begin_rebalance()  # the first assignment, being rebuilt
    status, body = await probe(client, "/readyz")
    assert status == 503 and "rebuilding" in body["reason"]
    assert (await probe(client, "/livez"))[0] == 200

    registry.finish_recovery({0, 1})
    registry.active[0].apply(Event("p", "u1", "label", "l", "L", "view", 0.7, True, 1), 1)
    registry.active[1].apply(Event("p", "u2", "label", "m", "M", "view", 0.7, True, 1), 1)
    assert await probe(client, "/readyz") == (200, {"ready": True, "serving": True})
    assert await probe(client, "/healthz") == (200, {
        "ready": True, "partitions": [0, 1], "recommendations": 2, "standbys": []})

    registry.begin_rebalance()  # partition 1 gained, rebuilt in the background (§11)
    registry.rebuilding = {1}
    del registry.active[1]
    registry.finish_recovery({0, 1})
    assert await probe(client, "/readyz") == (200, {"ready": True, "serving": True,
                                                    "rebuilding": [1]})
    status, body = await probe(client, "/healthz")  # not all of its partitions served yet
    assert status == 503 and body["partitions"] == [0] and body["rebuilding"] == [1]
    registry.rebuilding = set()

    registry.begin_rebalance()  # partitions moving: /healthz says so, /readyz stays ready
    assert await probe(client, "/readyz") == (200, {"ready": True, "serving": False})
    status, body = await probe(client, "/healthz")
    assert status == 503 and body["ready"] is False

    registry.stop()
    status, body = await probe(client, "/readyz")
    assert status == 503 and body["reason"] == "stopping"
    assert (await probe(client, "/livez"))[0] == 200
    assert (await client.get("/segments", headers={"program-id": "p"})).status == 401
