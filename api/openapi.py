"""The OpenAPI 3.1 document of the HTTP API, built from the pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

import streams
from api.models import (
    ErrorMessage,
    Health,
    HTTPValidationError,
    Liveness,
    PageSegmentCount,
    Readiness,
)
from api.params import PROGRAM_ID_HEADER, RequestParams, StreamParams
from streams.codec.json_schemas import SCHEMAS

_REF = "#/components/schemas/{model}"


def build_openapi(keys_required: bool = False) -> dict[str, Any]:
    """The document served at `GET /openapi.json` (``keys_required``: of a worker that asks for
    API keys)."""
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": _REF.format(model=model.__name__)}

    def json_body(description: str, model: type[BaseModel]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": ref(model)}}}

    unavailable = json_body("Service Unavailable: retry after `Retry-After` seconds", ErrorMessage)
    unavailable["headers"] = _retry_after()
    not_ready = json_body("Not ready", Health)
    not_ready["headers"] = _retry_after()
    ok = json_body("Successful Response", PageSegmentCount)
    ok["headers"] = _freshness_headers()
    segments = {
        "summary": "Get Segments",
        "description": ("Get list of user counts for single asset-based or label-based segments. "
                        "Every answer says how fresh it is (`Segments-As-Of`, `Segments-Lag`) "
                        "and whether it is stale (`Segments-Stale`)."),
        "operationId": "get_segments_segments_get",
        "parameters": _parameters(RequestParams),
        "responses": {
            "200": ok,
            "422": json_body("Validation Error", HTTPValidationError),
            "503": unavailable,
        },
    }
    stream_parameters = _parameters(StreamParams)
    for param in stream_parameters:
        if param["name"] == PROGRAM_ID_HEADER:
            param["required"] = False
            param["description"] = "The program (tenant); or query parameter `program_id`"
    stream_parameters.append({
        "name": "program_id", "in": "query", "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
        "description": "The program, for clients that cannot set headers (EventSource)"})
    stream = {
        "summary": "Stream Segments",
        "description": (
            "Server-sent events of the query's top `size` segments: first a `snapshot` (the "
            "body `GET /segments` answers for page 1 of that size, plus `as_of` and `lag`), "
            "then an `update` whenever that answer changes (at most once per "
            "`SEGMENTS_STREAM_INTERVAL_MS`): `{as_of, lag, total, upserts: [SegmentCount], "
            "removed: [[segment_basis_id, action_type]]}`, both with `stale: true` when part "
            "of the answer is not from the partitions' owners. Applying every update in order to "
            "the snapshot gives the list `GET /segments` answers at that `as_of`. A comment "
            "line keeps an idle stream open; a client that does not keep up is disconnected."),
        "operationId": "stream_segments_segments_stream_get",
        "parameters": stream_parameters,
        "responses": {
            "200": {"description": "The stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "422": json_body("Validation Error", HTTPValidationError),
            "503": json_body("Too many streams, or rebalancing: retry after `Retry-After` "
                             "seconds", ErrorMessage) | {"headers": _retry_after()},
        },
    }
    metrics = {
        "summary": "Metrics",
        "description": "Prometheus text exposition of this worker's metrics.",
        "operationId": "metrics_metrics_get",
        "responses": {"200": {"description": "The metrics",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}},
    }
    page = {
        "summary": "Live page",
        "description": "The live dashboard; its view lives in the URL (`program_id`, "
                       "`segment_type`, `segment_basis`, `min_weight`, `size`).",
        "operationId": "page_get",
        "responses": {"200": {"description": "The page",
                              "content": {"text/html": {"schema": {"type": "string"}}}}},
    }
    livez = {
        "summary": "Liveness",
        "description": "200 while the process and its event loop respond (no other "
                       "condition: for a liveness probe). Never walks the state.",
        "operationId": "livez_livez_get",
        "responses": {"200": json_body("Alive", Liveness)},
    }
    not_yet = json_body("Not ready, with the reason", Readiness)
    not_yet["headers"] = _retry_after()
    readyz = {
        "summary": "Readiness",
        "description": "200 once this worker can answer `GET /segments` with "
                       "`consistency=any` (for a readiness probe and load balancers), 503 with "
                       "the reason before. Never walks the state.",
        "operationId": "readyz_readyz_get",
        "responses": {"200": json_body("Ready", Readiness), "503": not_yet},
    }
    healthz = {
        "summary": "Health",
        "description": "Whether this worker serves its partitions now (assigned, every one "
                       "rebuilt, no rebalance under way), and what it holds.",
        "operationId": "healthz_healthz_get",
        "responses": {
            "200": json_body("Ready", Health),
            "503": not_ready,
        },
    }
    json_schemas = {
        "summary": "JSON Schema of a topic's records",
        "description": "The JSON Schema (draft 2020-12) of " + "; ".join(
            f"`{name}.json`: the {what}" for name, what in SCHEMAS.items())
            + ". Open, like this document: no API key is needed.",
        "operationId": "json_schema_schemas__name__get",
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string",
                                   "enum": [f"{name}.json" for name in SCHEMAS]}}],
        "responses": {
            "200": {"description": "The schema",
                    "content": {"application/schema+json": {"schema": {"type": "object"}}}},
            "404": json_body("No schema of that name", ErrorMessage),
        },
    }
    components: dict[str, Any] = {}
    if keys_required:
        unauthorized = json_body("Unauthorized: no API key, or an unknown one", ErrorMessage)
        unauthorized["headers"] = {"WWW-Authenticate": {
            "description": "`Bearer`", "schema": {"type": "string"}}}
        forbidden = json_body("Forbidden: the API key does not cover the program (for "
                              "`/metrics`: every program)", ErrorMessage)
        operations: list[dict[str, Any]] = [segments, stream, metrics, page]
        for operation in operations:
            operation["security"] = [{"apiKey": []}]
            operation["responses"] = operation["responses"] | {"401": unauthorized,
                                                               "403": forbidden}
        # A browser sends no key when it loads the page: its 401 is the page, which asks.
        operations[-1]["responses"]["401"] = {
            "description": "Unauthorized: the page itself, which asks for a key",
            "headers": unauthorized["headers"],
            "content": {"text/html": {"schema": {"type": "string"}}}}
        components["securitySchemes"] = {"apiKey": {
            "type": "http", "scheme": "bearer",
            "description": "An API key (`segments keys add`), as `Authorization: Bearer <key>`"}}
    components["schemas"] = dict(sorted(schemas.items()))
    return {
        "openapi": "3.1.0",
        "info": {"title": "segment-stream", "version": streams.__version__},
        "paths": {"/segments": {"get": segments}, "/segments/stream": {"get": stream},
                  "/healthz": {"get": healthz}, "/livez": {"get": livez},
                  "/readyz": {"get": readyz}, "/metrics": {"get": metrics},
                  "/": {"get": page}, "/schemas/{name}": {"get": json_schemas}},
        "components": components,
    }


def _parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Query parameters in declaration order, then the `program-id` header."""
    props = model.model_json_schema(by_alias=True, ref_template=_REF)["properties"]
    params: list[dict[str, Any]] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        param: dict[str, Any] = {
            "name": key,
            "in": "header" if key == PROGRAM_ID_HEADER else "query",
            "required": field.is_required(),
            "schema": props[key],
        }
        if field.description:
            param["description"] = field.description
        params.append(param)
    return params


def _freshness_headers() -> dict[str, Any]:
    return {
        "Segments-As-Of": {
            "description": "Epoch milliseconds when the answer was computed (a cached answer "
                           "keeps the time it was computed)",
            "schema": {"type": "integer", "minimum": 0},
        },
        "Segments-Lag": {
            "description": "Records not yet reflected in the answer when it was computed "
                           "(consumer lag of the partitions that fed it); 0: caught up",
            "schema": {"type": "integer", "minimum": 0},
        },
        "Segments-Stale": {
            "description": "Present (`true`) only when part of the answer is not from the "
                           "current owner of a partition: a standby copy, a partition moving, "
                           "or the query's last answer (`consistency=any`)",
            "schema": {"type": "string", "enum": ["true"]},
        },
    }


def _retry_after() -> dict[str, Any]:
    return {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "schema": {"type": "integer", "minimum": 0},
        }
    }
