"""The OpenAPI 3.1 document of the HTTP API, built from the pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

import streams
from api.models import ErrorMessage, Health, HTTPValidationError, PageSegmentCount
from api.params import PROGRAM_ID_HEADER, RequestParams

_REF = "#/components/schemas/{model}"


def build_openapi() -> dict[str, Any]:
    """The document served at `GET /openapi.json`."""
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
    segments = {
        "summary": "Get Segments",
        "description": "Get list of user counts for single asset-based or label-based segments.",
        "operationId": "get_segments_segments_get",
        "parameters": _parameters(),
        "responses": {
            "200": json_body("Successful Response", PageSegmentCount),
            "422": json_body("Validation Error", HTTPValidationError),
            "503": unavailable,
        },
    }
    healthz = {
        "summary": "Health",
        "description": "Whether this worker is ready (partitions assigned, tables recovered).",
        "operationId": "healthz_healthz_get",
        "responses": {
            "200": json_body("Ready", Health),
            "503": not_ready,
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "segment-stream", "version": streams.__version__},
        "paths": {"/segments": {"get": segments}, "/healthz": {"get": healthz}},
        "components": {"schemas": dict(sorted(schemas.items()))},
    }


def _parameters() -> list[dict[str, Any]]:
    """Query parameters in declaration order, then the `program-id` header."""
    props = RequestParams.model_json_schema(by_alias=True, ref_template=_REF)["properties"]
    params: list[dict[str, Any]] = []
    for name, field in RequestParams.model_fields.items():
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


def _retry_after() -> dict[str, Any]:
    return {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "schema": {"type": "integer", "minimum": 0},
        }
    }
