"""The OpenAPI document: valid, complete, and in step with the parser."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

import streams
from api.errors import RequestValidationError
from api.models import PageSegmentCount, SegmentCount
from api.openapi import build_openapi
from api.params import parse_segments_request

DOC = build_openapi()
PARAMS = {p["name"]: p for p in DOC["paths"]["/segments"]["get"]["parameters"]}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_top_level() -> None:
    assert DOC["openapi"] == "3.1.0"
    assert DOC["info"] == {"title": "segment-stream", "version": streams.__version__}
    assert set(DOC["paths"]) == {"/segments", "/segments/stream", "/healthz", "/livez",
                                 "/readyz", "/metrics", "/", "/schemas/{name}"}
    orjson.dumps(DOC)
    assert build_openapi() == DOC  # deterministic


def test_components_hoisted_and_refs_resolve() -> None:
    schemas = DOC["components"]["schemas"]
    assert {"SegmentCount", "PageSegmentCount", "ValidationError", "HTTPValidationError"} <= set(
        schemas
    )
    assert "$defs" not in orjson.dumps(DOC).decode()
    for ref in refs(DOC):
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in schemas


def test_seed_schemas() -> None:
    schemas = DOC["components"]["schemas"]
    seg = schemas["SegmentCount"]
    assert seg["required"] == [
        "segment_type",
        "segment_basis",
        "segment_basis_id",
        "action_type",
        "name",
        "user_count",
        "strength",
        "min_weight",
    ]
    assert seg["properties"]["segment_basis"]["enum"] == ["label", "asset"]
    assert seg["properties"]["user_count"]["type"] == "integer"
    assert seg["properties"]["strength"]["type"] == "number"
    page = schemas["PageSegmentCount"]
    assert page["required"] == ["items", "total", "page", "size"]
    assert page["properties"]["items"]["items"] == {"$ref": "#/components/schemas/SegmentCount"}
    assert page["properties"]["total"]["minimum"] == 0
    assert page["properties"]["page"]["minimum"] == 1
    assert page["properties"]["size"]["minimum"] == 1
    loc = schemas["ValidationError"]["properties"]["loc"]
    assert loc["items"] == {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    assert schemas["ValidationError"]["required"] == ["loc", "msg", "type"]


def test_parameters() -> None:
    assert list(PARAMS) == [
        "segment_type",
        "segment_basis",
        "min_weight",
        "force_refresh",
        "page",
        "size",
        "consistency",
        "program-id",
    ]
    header = PARAMS["program-id"]
    assert (header["in"], header["required"]) == ("header", True)
    assert header["schema"]["minLength"] == 1
    assert header["schema"]["maxLength"] == 128
    for name in list(PARAMS)[:-1]:
        assert (PARAMS[name]["in"], PARAMS[name]["required"]) == ("query", False)
    s = {name: p["schema"] for name, p in PARAMS.items()}
    assert s["segment_type"]["enum"] == ["growth", "base", "discovery"]
    assert s["segment_basis"]["enum"] == ["labels", "assets", "label", "asset"]
    assert s["force_refresh"]["type"] == "boolean"
    assert (s["min_weight"]["type"], s["min_weight"]["minimum"], s["min_weight"]["maximum"]) == (
        "number",
        0,
        1,
    )
    assert (s["page"]["type"], s["page"]["minimum"], "maximum" in s["page"]) == (
        "integer",
        1,
        False,
    )
    assert (s["size"]["minimum"], s["size"]["maximum"]) == (1, 100)
    assert s["consistency"]["enum"] == ["any", "strict"]
    assert PARAMS["force_refresh"]["description"] == (
        "Recalculate the segment counts and do not use the cache"
    )


def test_defaults_match_the_parser() -> None:
    parsed = parse_segments_request({}, {"program-id": "p"})
    defaults = {n: p["schema"]["default"] for n, p in PARAMS.items() if "default" in p["schema"]}
    assert defaults == {
        "segment_type": parsed.segment_type,
        "segment_basis": "labels",
        "min_weight": parsed.min_weight,
        "force_refresh": parsed.force_refresh,
        "page": parsed.page,
        "size": parsed.size,
        "consistency": parsed.consistency,
    }
    assert parsed.segment_basis == "label"


def _accepts(name: str, raw: str) -> bool:
    try:
        parse_segments_request({name: raw}, {"program-id": "p"})
    except RequestValidationError:
        return False
    return True


def test_bounds_and_enums_match_the_parser() -> None:
    for name, param in PARAMS.items():
        schema = param["schema"]
        for value in schema.get("enum", []):
            assert _accepts(name, value)
        if schema.get("type") in {"integer", "number"}:
            low = schema["minimum"]
            assert _accepts(name, str(low))
            assert not _accepts(name, str(low - 1))
            if "maximum" in schema:
                assert _accepts(name, str(schema["maximum"]))
                assert not _accepts(name, str(schema["maximum"] + 1))
    assert _accepts("force_refresh", "true")
    assert _accepts("force_refresh", "false")


def test_responses() -> None:
    get = DOC["paths"]["/segments"]["get"]
    content = "application/json"
    assert get["responses"]["200"]["content"][content]["schema"]["$ref"].endswith(
        "/PageSegmentCount"
    )
    assert get["responses"]["422"]["content"][content]["schema"]["$ref"].endswith(
        "/HTTPValidationError"
    )
    assert "Retry-After" in get["responses"]["503"]["headers"]
    assert set(get["responses"]["200"]["headers"]) == {
        "Segments-As-Of", "Segments-Lag", "Segments-Stale"}
    stream = DOC["paths"]["/segments/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert {p["name"] for p in stream["parameters"]} == {
        "segment_type", "segment_basis", "min_weight", "size", "consistency", "program-id",
        "program_id"}
    health = DOC["paths"]["/healthz"]["get"]["responses"]
    assert set(health) == {"200", "503"}
    assert "Retry-After" in health["503"]["headers"]
    assert set(DOC["paths"]["/livez"]["get"]["responses"]) == {"200"}
    ready = DOC["paths"]["/readyz"]["get"]["responses"]
    assert set(ready) == {"200", "503"} and "Retry-After" in ready["503"]["headers"]
    assert DOC["components"]["schemas"]["Readiness"]["required"] == ["ready", "serving"]


def _validator(name: str) -> Any:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    schema = {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]}
    return jsonschema_rs.validator_for(schema)


def test_real_bodies_match_their_schemas() -> None:
    with pytest.raises(RequestValidationError) as info:
        parse_segments_request({"min_weight": "2", "size": "0", "segment_type": "x"}, {})
    _validator("HTTPValidationError").validate(
        orjson.loads(orjson.dumps({"detail": info.value.errors}))
    )
    item = SegmentCount(
        segment_type="base",
        segment_basis="asset",
        segment_basis_id="a1",
        action_type="view",
        name="A",
        user_count=3,
        strength=0.7,
        min_weight=0.5,
    )
    body = PageSegmentCount(items=[item], total=1, page=10**30, size=50).model_dump_json()
    _validator("PageSegmentCount").validate(orjson.loads(body))
    _validator("Health").validate({"ready": False, "partitions": [], "recommendations": 0})
    _validator("Health").validate({"ready": True, "partitions": [0, 3], "recommendations": 7})
    _validator("ErrorMessage").validate({"detail": "not ready"})


def test_openapi_spec_validator() -> None:
    from openapi_spec_validator import validate

    validate(copy.deepcopy(DOC))


def _schemathesis_operation() -> Any:
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_dict(copy.deepcopy(DOC))
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    return schema["/segments"]["GET"]


def test_schemathesis_loads_and_validates() -> None:
    _schemathesis_operation()


def _as_received(case: Any) -> tuple[MultiDictProxy[str], CIMultiDictProxy[str]]:
    """What aiohttp hands the handler for a schemathesis case sent with `requests`."""
    requests = pytest.importorskip("requests")
    kwargs = case.as_transport_kwargs(base_url="http://127.0.0.1")
    prepared = requests.Request(
        method=kwargs["method"],
        url=kwargs["url"],
        params=kwargs.get("params"),
        headers=kwargs.get("headers"),
    ).prepare()
    query = MultiDict(parse_qsl(urlsplit(prepared.url).query, keep_blank_values=True))
    headers = CIMultiDict(
        (k, v.encode("latin-1").decode("utf-8", "surrogateescape") if isinstance(v, str) else v)
        for k, v in prepared.headers.items()
    )
    return MultiDictProxy(query), CIMultiDictProxy(headers)


def test_schemathesis_positive_cases_are_accepted() -> None:
    from schemathesis.generation.modes import GenerationMode

    operation = _schemathesis_operation()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def check(case: Any) -> None:
        query, headers = _as_received(case)
        parsed = parse_segments_request(query, headers)
        sent = case.headers["program-id"]
        # requests sends latin-1; bytes that happen to be valid UTF-8 are read as UTF-8
        assert parsed.program_id in {sent, sent.encode("latin-1").decode("utf-8", "replace")}

    check()


def test_schemathesis_negative_cases_never_crash() -> None:
    from schemathesis.generation.modes import GenerationMode

    operation = _schemathesis_operation()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    def check(case: Any) -> None:
        query, headers = _as_received(case)
        try:
            parse_segments_request(query, headers)
        except RequestValidationError as exc:
            orjson.dumps({"detail": exc.errors})

    check()
