"""Parse and validate the query and headers of `GET /segments`, FastAPI style.

Every problem becomes one pydantic error with FastAPI's shape
(`type`, `loc` such as `["query", "min_weight"]`, `msg`, `input`, and `ctx` when pydantic gives
one), so a 422 body looks exactly like FastAPI + pydantic v2 would render it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, TypeVar

import pydantic
from multidict import MultiMapping
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import ErrorDetails, PydanticCustomError

from api.errors import RequestValidationError
from api.models import SegmentBasis, SegmentType

PROGRAM_ID_HEADER: Final = "program-id"
SegmentBasisParam = Literal["labels", "assets", "label", "asset"]
Consistency = Literal["any", "strict"]
MAX_LIMIT: Final = 1 << 62  # a worker-to-worker row limit beyond any number of rows: "all"

_BASIS: Final[dict[str, SegmentBasis]] = {
    "labels": "label",
    "assets": "asset",
    "label": "label",
    "asset": "asset",
}
_BOOL_WORDS: Final = frozenset({"true", "false", "1", "0", "yes", "no", "on", "off"})
_I64_MIN: Final = -(2**63)
_U64_MAX: Final = 2**64 - 1


def _strict_bool_word(value: Any) -> Any:
    """Narrow pydantic's lax bool parsing to the contract's words (no `t`, `y`, `f`, `n`)."""
    if isinstance(value, str) and value.lower() not in _BOOL_WORDS:
        raise PydanticCustomError(
            "bool_parsing", "Input should be a valid boolean, unable to interpret input"
        )
    return value


def _header_text(value: Any) -> Any:
    """Read non-UTF-8 header bytes (surrogate-escaped by aiohttp) as latin-1, like Starlette."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            try:
                return value.encode("utf-8", "surrogateescape").decode("latin-1")
            except UnicodeEncodeError:
                raise PydanticCustomError(
                    "string_unicode",
                    "Input should be a valid string, unable to parse raw data as a unicode string",
                ) from None
    return value


class RequestParams(BaseModel):
    """The declared parameters of `GET /segments`; also the source of their OpenAPI schemas."""

    model_config = ConfigDict(frozen=True, extra="ignore", validate_by_name=False)

    segment_type: SegmentType = Field(
        default="growth",
        description=(
            "Indicates if the segment should consider all growth values (default), only values "
            "matching a user history (base), or only values that are net new for the user "
            "(discovery). See product documentation for more details about segment types"
        ),
    )
    segment_basis: SegmentBasisParam = Field(
        default="labels",
        description="Specifies whether the segments should be broken out by asset or label.",
    )
    min_weight: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description=(
            "Minimum weight allowable for asset and label recommendations to qualify for the "
            "segment."
        ),
    )
    force_refresh: Annotated[bool, BeforeValidator(_strict_bool_word)] = Field(
        default=False, description="Recalculate the segment counts and do not use the cache"
    )
    page: int = Field(default=1, ge=1, description="Page number")
    size: int = Field(default=50, ge=1, le=100, description="Page size")
    consistency: Consistency = Field(
        default="any",
        description=(
            "`any`: an answer whenever every partition's data can be found (its owner, a "
            "standby copy, or the last answer), flagged `Segments-Stale: true` when not all "
            "from owners; `strict`: owners only, else 503 with Retry-After"
        ),
    )
    program_id: Annotated[str, BeforeValidator(_header_text)] = Field(
        alias=PROGRAM_ID_HEADER, min_length=1, max_length=128, description="The program (tenant)"
    )


QUERY_PARAMS: Final = tuple(
    name for name, field in RequestParams.model_fields.items() if field.alias is None
)


@dataclass(frozen=True, slots=True)
class SegmentsQuery:
    """A valid `GET /segments` request, normalised."""

    program_id: str
    segment_type: SegmentType = "growth"
    segment_basis: SegmentBasis = "label"
    min_weight: float = 0.5
    force_refresh: bool = False
    page: int = 1
    size: int = 50
    consistency: Consistency = "any"


def parse_segments_request(
    query: Mapping[str, str] | MultiMapping[str], headers: Mapping[str, str]
) -> SegmentsQuery:
    """Validate a request; raise `RequestValidationError` listing every problem."""
    params = _validate(RequestParams, QUERY_PARAMS, query, headers)
    return SegmentsQuery(
        program_id=params.program_id,
        segment_type=params.segment_type,
        segment_basis=_BASIS[params.segment_basis],
        min_weight=params.min_weight + 0.0,  # -0.0 -> 0.0
        force_refresh=params.force_refresh,
        page=params.page,
        size=params.size,
        consistency=params.consistency,
    )


def _as_in_segments(name: str) -> Any:
    """The field of `GET /segments` called ``name`` (its default, constraints, alias)."""
    return copy.deepcopy(RequestParams.model_fields[name])


class StreamParams(BaseModel):
    """The parameters of `GET /segments/stream`: those of `GET /segments` but `page` and
    `force_refresh`, and `size` up to 1000 (how many top segments to follow)."""

    model_config = ConfigDict(frozen=True, extra="ignore", validate_by_name=False)

    segment_type: SegmentType = _as_in_segments("segment_type")
    segment_basis: SegmentBasisParam = _as_in_segments("segment_basis")
    min_weight: float = _as_in_segments("min_weight")
    size: int = Field(default=50, ge=1, le=1000, description="How many top segments to follow")
    consistency: Consistency = _as_in_segments("consistency")
    program_id: Annotated[str, BeforeValidator(_header_text)] = _as_in_segments("program_id")


STREAM_QUERY_PARAMS: Final = tuple(
    name for name, field in StreamParams.model_fields.items() if field.alias is None
)


def parse_stream_request(
    query: Mapping[str, str] | MultiMapping[str], headers: Mapping[str, str]
) -> SegmentsQuery:
    """Validate a stream request (the program in the header, or else in query parameter
    ``program_id``: browsers' EventSource cannot set headers); raise
    `RequestValidationError`."""
    if _header(headers, PROGRAM_ID_HEADER) is None and _last(query, "program_id") is not None:
        headers = {PROGRAM_ID_HEADER: _last(query, "program_id") or ""}
    params = _validate(StreamParams, STREAM_QUERY_PARAMS, query, headers)
    return SegmentsQuery(
        program_id=params.program_id,
        segment_type=params.segment_type,
        segment_basis=_BASIS[params.segment_basis],
        min_weight=params.min_weight + 0.0,
        size=params.size,
        consistency=params.consistency,
    )


_Model = TypeVar("_Model", RequestParams, StreamParams)


def _validate(model: type[_Model], names: tuple[str, ...],
              query: Mapping[str, str] | MultiMapping[str],
              headers: Mapping[str, str]) -> _Model:
    data: dict[str, str] = {}
    for name in names:
        value = _last(query, name)
        if value is not None:
            data[name] = value
    header = _header(headers, PROGRAM_ID_HEADER)
    if header is not None:
        data[PROGRAM_ID_HEADER] = header
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([_fastapi_error(err) for err in errors]) from None


def parse_internal_request(query: Mapping[str, str] | MultiMapping[str]) -> SegmentsQuery:
    """Validate a worker-to-worker query (the program as query parameter ``program_id``)
    exactly like `GET /segments`; raise `RequestValidationError` listing every problem."""
    program = _last(query, "program_id")
    try:
        return parse_segments_request(query, {} if program is None else {
            PROGRAM_ID_HEADER: program})
    except RequestValidationError as exc:
        for err in exc.errors:
            if err["loc"] == ["header", PROGRAM_ID_HEADER]:
                err["loc"] = ["query", "program_id"]
        raise


@dataclass(frozen=True, slots=True)
class InternalScope:
    """What a worker-to-worker query asks for besides the query: ``partitions`` restricts the
    answer to them (None: every partition the worker owns); ``any``: answer from whatever the
    worker holds of them (its own partitions even in a rebalance, standby copies), flagged
    stale when not from a serving owner; ``limit``: only the first rows in the contract's
    order, this many, and how many there are in all (page pushdown; None: every row)."""

    partitions: frozenset[int] | None = None
    any: bool = False
    limit: int | None = None


def parse_internal_scope(query: Mapping[str, str] | MultiMapping[str],
                         total_partitions: int) -> InternalScope:
    """The partitions and mode of a worker-to-worker query; raise `RequestValidationError`."""
    errors = []

    def partition_list(name: str) -> frozenset[int] | None:
        raw = _last(query, name)
        if raw is None:
            return None
        try:
            values = frozenset(int(x) for x in raw.split(",") if x)
        except ValueError:
            values = frozenset({-1})
        if any(not 0 <= v < total_partitions for v in values):
            errors.append({"type": "value_error", "loc": ["query", name], "input": raw[:200],
                           "msg": f"Value error, partitions are 0..{total_partitions - 1}"})
        return values

    partitions = partition_list("partitions")
    limit = None
    raw_limit = _last(query, "limit")
    if raw_limit is not None:
        limit = int(raw_limit) if raw_limit.isdecimal() and len(raw_limit) <= 19 else 0
        if not 1 <= limit <= MAX_LIMIT:
            errors.append({"type": "value_error", "loc": ["query", "limit"],
                           "input": raw_limit[:200],
                           "msg": f"Value error, limit is 1..{MAX_LIMIT}"})
    mode = (_last(query, "any") or "false").lower()
    if mode not in ("true", "false"):
        errors.append({"type": "bool_parsing", "loc": ["query", "any"], "input": mode[:200],
                       "msg": "Input should be a valid boolean"})
    if errors:
        raise RequestValidationError(errors)
    return InternalScope(partitions, mode == "true", limit)


def _last(query: Mapping[str, str] | MultiMapping[str], name: str) -> str | None:
    """The last value of a repeated query parameter wins, as in Starlette/FastAPI."""
    if isinstance(query, MultiMapping):
        values = query.getall(name, [])
        return values[-1] if values else None
    return query.get(name)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name; the first one wins, as in Starlette."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, val in headers.items():
        if key.lower() == name:
            return val
    return None


def _fastapi_error(err: ErrorDetails) -> dict[str, Any]:
    """A pydantic error as FastAPI renders it, with a `query`/`header` loc prefix."""
    loc = err["loc"]
    source = "header" if loc[:1] == (PROGRAM_ID_HEADER,) else "query"
    out: dict[str, Any] = {
        "type": err["type"],
        "loc": [source, *loc],
        "msg": err["msg"],
        "input": None if err["type"] == "missing" else err["input"],
    }
    if "ctx" in err:
        out["ctx"] = err["ctx"]
    result: dict[str, Any] = jsonable(out)
    return result


def jsonable(value: Any) -> Any:
    """`value` made serialisable by orjson (odd values become strings, bad UTF-8 replaced)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if _I64_MIN <= value <= _U64_MAX else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _utf8_safe(value)
    if isinstance(value, Mapping):
        return {_utf8_safe(str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return _utf8_safe(str(value))


def _utf8_safe(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text
