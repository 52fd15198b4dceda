"""``GET /schemas/{input,change,count}.json`` (contract 4c): every schema, byte for byte as
shipped, as ``application/schema+json``; 404 for any other name; open like /openapi.json, also
on a worker that asks for API keys. Driven through the real aiohttp app in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer, unused_port

from api.app import create_web_app
from api.auth import ClusterAuth
from api.keys import KeyRing, add_key
from api.openapi import build_openapi
from streams.codec.json_schemas import SCHEMAS, schema_bytes
from tests.unit.api.test_answers import FakeWorker


@pytest.fixture(params=[False, True], ids=["open", "with-keys"])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TestClient]:
    port = unused_port()
    worker = FakeWorker(f"http://127.0.0.1:{port}", {0, 1, 2, 3})
    worker.cluster = {worker.url: worker}
    if request.param:
        add_key(tmp_path / "keys.json", "reader", ["p"])
        app = create_web_app(worker, None, keys=KeyRing(tmp_path / "keys.json"),
                             cluster=ClusterAuth("a shared secret of the cluster", worker.url))
    else:
        app = create_web_app(worker, None)
    test_client = TestClient(TestServer(app, port=port))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


@pytest.mark.parametrize("name", sorted(SCHEMAS))
async def test_every_schema_is_served_without_a_key(client: TestClient, name: str) -> None:
    response = await client.get(f"/schemas/{name}.json")
    assert response.status == 200
    assert response.content_type == "application/schema+json"
    body = await response.read()
    assert body == schema_bytes(name)
    assert orjson.loads(body)["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert (await client.head(f"/schemas/{name}.json")).status == 200


@pytest.mark.parametrize("path", ["/schemas/other.json", "/schemas/input", "/schemas/input.yaml",
                                  "/schemas/..%2Fpyproject.json", "/schemas/", "/schemas",
                                  "/schemas/input.json/x", "/schemas/INPUT.json"])
async def test_any_other_name_is_a_404(client: TestClient, path: str) -> None:
    response = await client.get(path)
    assert response.status == 404, path


def test_the_openapi_document_lists_the_route_and_its_names() -> None:
    for keys_required in (False, True):
        operation = build_openapi(keys_required)["paths"]["/schemas/{name}"]["get"]
        assert "security" not in operation
        [param] = operation["parameters"]
        assert param["in"] == "path"
        assert param["schema"]["enum"] == [f"{name}.json" for name in SCHEMAS]
        assert set(operation["responses"]) == {"200", "404"}
