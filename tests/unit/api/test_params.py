"""`parse_segments_request`: the contract's table, FastAPI-exact 422 errors, fuzzing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from api.errors import RequestValidationError
from api.params import SegmentsQuery, parse_segments_request

HEADERS = {"program-id": "p1"}


def parse(query: Mapping[str, str] | list[tuple[str, str]], headers: Any = None) -> SegmentsQuery:
    q = MultiDictProxy(MultiDict(query))
    h = CIMultiDictProxy(CIMultiDict(HEADERS if headers is None else headers))
    return parse_segments_request(q, h)


def errors_of(query: Any, headers: Any = None) -> list[dict[str, Any]]:
    with pytest.raises(RequestValidationError) as info:
        parse(query, headers)
    orjson.dumps({"detail": info.value.errors})  # always serialisable
    return info.value.errors


def test_defaults() -> None:
    assert parse({}) == SegmentsQuery(
        program_id="p1",
        segment_type="growth",
        segment_basis="label",
        min_weight=0.5,
        force_refresh=False,
        page=1,
        size=50,
    )


ACCEPTED: list[tuple[str, str, object]] = [
    ("segment_type", "growth", "growth"),
    ("segment_type", "base", "base"),
    ("segment_type", "discovery", "discovery"),
    ("segment_basis", "labels", "label"),
    ("segment_basis", "assets", "asset"),
    ("segment_basis", "label", "label"),
    ("segment_basis", "asset", "asset"),
    ("min_weight", "0", 0.0),
    ("min_weight", "1", 1.0),
    ("min_weight", "0.0", 0.0),
    ("min_weight", "1.0", 1.0),
    ("min_weight", "0.25", 0.25),
    ("min_weight", "1e-1", 0.1),
    ("min_weight", "5E-324", 5e-324),
    ("min_weight", "-0", 0.0),
    ("min_weight", "-0.0", 0.0),
    *[("force_refresh", w, True) for w in ("true", "TRUE", "True", "1", "yes", "YeS", "on", "ON")],
    *[
        ("force_refresh", w, False)
        for w in ("false", "FALSE", "False", "0", "no", "NO", "off", "Off")
    ],
    ("page", "1", 1),
    ("page", "2", 2),
    ("page", "1000000", 1_000_000),
    ("page", str(10**30), 10**30),
    ("size", "1", 1),
    ("size", "2", 2),
    ("size", "50", 50),
    ("size", "99", 99),
    ("size", "100", 100),
]


@pytest.mark.parametrize(("name", "raw", "expected"), ACCEPTED)
def test_accepted_values(name: str, raw: str, expected: object) -> None:
    value = getattr(parse({name: raw}), name)
    assert value == expected
    assert type(value) is type(expected)


def test_negative_zero_weight_is_normalised() -> None:
    assert str(parse({"min_weight": "-0"}).min_weight) == "0.0"


REJECTED: list[tuple[str, str, str]] = [
    ("segment_type", "x", "literal_error"),
    ("segment_type", "", "literal_error"),
    ("segment_type", "Growth", "literal_error"),
    ("segment_type", "growth ", "literal_error"),
    ("segment_basis", "x", "literal_error"),
    ("segment_basis", "", "literal_error"),
    ("segment_basis", "LABELS", "literal_error"),
    ("segment_basis", "labelz", "literal_error"),
    ("min_weight", "abc", "float_parsing"),
    ("min_weight", "", "float_parsing"),
    ("min_weight", "0x1", "float_parsing"),
    ("min_weight", "\uff11", "float_parsing"),
    ("min_weight", "-0.1", "greater_than_equal"),
    ("min_weight", "-1e-300", "greater_than_equal"),
    ("min_weight", "1.0000001", "less_than_equal"),
    ("min_weight", "2", "less_than_equal"),
    ("min_weight", "1e308", "less_than_equal"),
    ("min_weight", "1e309", "finite_number"),
    ("min_weight", "nan", "finite_number"),
    ("min_weight", "NaN", "finite_number"),
    ("min_weight", "inf", "finite_number"),
    ("min_weight", "-inf", "finite_number"),
    ("min_weight", "Infinity", "finite_number"),
    *[
        ("force_refresh", w, "bool_parsing")
        for w in ("t", "f", "y", "n", "T", "Y", "2", "-1", "", "truee", " true", "ja", "null")
    ],
    ("page", "0", "greater_than_equal"),
    ("page", "-1", "greater_than_equal"),
    ("page", "1.5", "int_parsing"),
    ("page", "abc", "int_parsing"),
    ("page", "", "int_parsing"),
    ("page", "1e3", "int_parsing"),
    ("page", "٣", "int_parsing"),
    ("page", "9" * 10_000, "int_parsing_size"),
    ("size", "0", "greater_than_equal"),
    ("size", "-5", "greater_than_equal"),
    ("size", "101", "less_than_equal"),
    ("size", str(10**30), "less_than_equal"),
    ("size", "abc", "int_parsing"),
    ("size", "", "int_parsing"),
    ("size", "1e2", "int_parsing"),
]


@pytest.mark.parametrize(("name", "raw", "error_type"), REJECTED)
def test_rejected_values(name: str, raw: str, error_type: str) -> None:
    [error] = errors_of({name: raw})
    assert error["type"] == error_type
    assert error["loc"] == ["query", name]
    assert error["input"] == raw


EXACT: list[tuple[dict[str, str], dict[str, Any]]] = [
    (
        {"min_weight": "abc"},
        {
            "type": "float_parsing",
            "loc": ["query", "min_weight"],
            "msg": "Input should be a valid number, unable to parse string as a number",
            "input": "abc",
        },
    ),
    (
        {"min_weight": "2"},
        {
            "type": "less_than_equal",
            "loc": ["query", "min_weight"],
            "msg": "Input should be less than or equal to 1",
            "input": "2",
            "ctx": {"le": 1.0},
        },
    ),
    (
        {"min_weight": "-1"},
        {
            "type": "greater_than_equal",
            "loc": ["query", "min_weight"],
            "msg": "Input should be greater than or equal to 0",
            "input": "-1",
            "ctx": {"ge": 0.0},
        },
    ),
    (
        {"min_weight": "nan"},
        {
            "type": "finite_number",
            "loc": ["query", "min_weight"],
            "msg": "Input should be a finite number",
            "input": "nan",
        },
    ),
    (
        {"size": "0"},
        {
            "type": "greater_than_equal",
            "loc": ["query", "size"],
            "msg": "Input should be greater than or equal to 1",
            "input": "0",
            "ctx": {"ge": 1},
        },
    ),
    (
        {"size": "101"},
        {
            "type": "less_than_equal",
            "loc": ["query", "size"],
            "msg": "Input should be less than or equal to 100",
            "input": "101",
            "ctx": {"le": 100},
        },
    ),
    (
        {"page": "x"},
        {
            "type": "int_parsing",
            "loc": ["query", "page"],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "input": "x",
        },
    ),
    (
        {"segment_type": "x"},
        {
            "type": "literal_error",
            "loc": ["query", "segment_type"],
            "msg": "Input should be 'growth', 'base' or 'discovery'",
            "input": "x",
            "ctx": {"expected": "'growth', 'base' or 'discovery'"},
        },
    ),
    (
        {"segment_basis": "x"},
        {
            "type": "literal_error",
            "loc": ["query", "segment_basis"],
            "msg": "Input should be 'labels', 'assets', 'label' or 'asset'",
            "input": "x",
            "ctx": {"expected": "'labels', 'assets', 'label' or 'asset'"},
        },
    ),
    (
        {"force_refresh": "t"},
        {
            "type": "bool_parsing",
            "loc": ["query", "force_refresh"],
            "msg": "Input should be a valid boolean, unable to interpret input",
            "input": "t",
        },
    ),
]


@pytest.mark.parametrize(("query", "expected"), EXACT)
def test_exact_error_bodies(query: dict[str, str], expected: dict[str, Any]) -> None:
    assert errors_of(query) == [expected]


MISSING_HEADER = {
    "type": "missing",
    "loc": ["header", "program-id"],
    "msg": "Field required",
    "input": None,
}


def test_missing_header() -> None:
    assert errors_of({}, headers={}) == [MISSING_HEADER]


def test_header_is_not_read_from_the_query() -> None:
    assert errors_of({"program-id": "p1", "program_id": "p1"}, headers={}) == [MISSING_HEADER]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "",
            {
                "type": "string_too_short",
                "loc": ["header", "program-id"],
                "msg": "String should have at least 1 character",
                "input": "",
                "ctx": {"min_length": 1},
            },
        ),
        (
            "x" * 129,
            {
                "type": "string_too_long",
                "loc": ["header", "program-id"],
                "msg": "String should have at most 128 characters",
                "input": "x" * 129,
                "ctx": {"max_length": 128},
            },
        ),
    ],
)
def test_header_length_errors(value: str, expected: dict[str, Any]) -> None:
    assert errors_of({}, headers={"program-id": value}) == [expected]


@pytest.mark.parametrize("value", ["p", "x" * 128, "prog-1", "ünïcödé", "日本", "🎉" * 128])
def test_header_accepted(value: str) -> None:
    assert parse({}, headers={"program-id": value}).program_id == value


@pytest.mark.parametrize("name", ["program-id", "Program-Id", "PROGRAM-ID"])
def test_header_name_is_case_insensitive(name: str) -> None:
    assert parse({}, headers={name: "p9"}).program_id == "p9"
    plain: dict[str, str] = {name: "p9"}
    assert parse_segments_request({}, plain).program_id == "p9"


def test_repeated_header_first_wins_as_in_starlette() -> None:
    headers = [("program-id", "first"), ("Program-Id", "second")]
    assert parse({}, headers=headers).program_id == "first"


def test_non_utf8_header_bytes_read_as_latin1() -> None:
    # aiohttp decodes header bytes as UTF-8 with surrogateescape; b"caf\xe9" arrives as "caf\udce9"
    raw = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert parse({}, headers={"program-id": raw}).program_id == "café"
    too_long = (b"\xe9" * 129).decode("utf-8", "surrogateescape")
    [error] = errors_of({}, headers={"program-id": too_long})
    assert error["type"] == "string_too_long"


def test_lone_surrogate_header_is_rejected_and_serialisable() -> None:
    [error] = errors_of({}, headers={"program-id": "a\ud800b"})
    assert error["type"] == "string_unicode"
    assert error["loc"] == ["header", "program-id"]


def test_all_errors_at_once_in_declaration_order() -> None:
    query = {
        "size": "0",
        "page": "0",
        "force_refresh": "maybe",
        "min_weight": "abc",
        "segment_basis": "x",
        "segment_type": "x",
    }
    errors = errors_of(query, headers={})
    assert [e["loc"] for e in errors] == [
        ["query", "segment_type"],
        ["query", "segment_basis"],
        ["query", "min_weight"],
        ["query", "force_refresh"],
        ["query", "page"],
        ["query", "size"],
        ["header", "program-id"],
    ]


def test_sample_body_min_weight_abc_size_0_without_header() -> None:
    errors = errors_of({"min_weight": "abc", "size": "0"}, headers={})
    assert orjson.loads(orjson.dumps({"detail": errors})) == {
        "detail": [
            {
                "type": "float_parsing",
                "loc": ["query", "min_weight"],
                "msg": "Input should be a valid number, unable to parse string as a number",
                "input": "abc",
            },
            {
                "type": "greater_than_equal",
                "loc": ["query", "size"],
                "msg": "Input should be greater than or equal to 1",
                "input": "0",
                "ctx": {"ge": 1},
            },
            MISSING_HEADER,
        ]
    }


@pytest.mark.parametrize(
    ("pairs", "expected_size"),
    [
        ([("size", "0"), ("size", "10")], 10),
        ([("size", "10"), ("size", "20"), ("size", "30")], 30),
    ],
)
def test_repeated_query_param_last_wins(pairs: list[tuple[str, str]], expected_size: int) -> None:
    assert parse(pairs).size == expected_size


def test_repeated_query_param_last_wins_even_if_invalid() -> None:
    [error] = errors_of([("size", "10"), ("size", "0")])
    assert error["input"] == "0"


def test_unknown_params_are_ignored() -> None:
    assert parse({"foo": "bar", "SIZE": "0", "page ": "x", "": ""}) == parse({})


def test_plain_mapping_query() -> None:
    assert parse_segments_request({"size": "7"}, {"program-id": "p"}).size == 7


@pytest.mark.parametrize(
    "raw",
    [
        "x" * 1_000_000,
        "9" * 1_000_000,
        "0." + "1" * 100_000,
        "\x00",
        "\ud800",
        "\udcff",
        "🎉",
        "\u202e\u0301",
        "%ff",
    ],
)
@pytest.mark.parametrize(
    "name", ["segment_type", "segment_basis", "min_weight", "force_refresh", "page", "size"]
)
def test_hostile_inputs_only_raise_validation_errors(name: str, raw: str) -> None:
    try:
        parse({name: raw}, headers={"program-id": raw})
    except RequestValidationError as exc:
        orjson.dumps({"detail": exc.errors})


def test_long_decimal_weight_is_parsed() -> None:
    assert parse({"min_weight": "0." + "1" * 100_000}).min_weight == pytest.approx(1 / 9)


_names = st.sampled_from(
    ["segment_type", "segment_basis", "min_weight", "force_refresh", "page", "size",
     "consistency", "program-id"]
)
_keys = st.one_of(_names, st.text(max_size=20))
_values = st.one_of(
    st.sampled_from(["", "0", "1", "-1", "0.5", "true", "nan", "growth", "labels", "1e400"]),
    st.integers().map(str),
    st.floats().map(str),
    st.text(),
    st.text(alphabet=st.characters(categories=["Cs", "Lu", "Nd", "Zs", "Cc"])),  # lone surrogates
)


@settings(max_examples=300, deadline=None)
@given(
    query=st.lists(st.tuples(_keys, _values), max_size=10),
    headers=st.dictionaries(_keys, _values, max_size=5),
)
def test_fuzz_parser_returns_query_or_serialisable_errors(
    query: list[tuple[str, str]], headers: dict[str, str]
) -> None:
    for q in (MultiDictProxy(MultiDict(query)), dict(query)):
        try:
            result = parse_segments_request(q, headers)
        except RequestValidationError as exc:
            assert exc.errors
            body = orjson.loads(orjson.dumps({"detail": exc.errors}))
            for error in body["detail"]:
                assert error["loc"][0] in {"query", "header"}
                assert set(error) <= {"type", "loc", "msg", "input", "ctx"}
        else:
            assert isinstance(result, SegmentsQuery)
            assert 1 <= len(result.program_id) <= 128
            assert 0.0 <= result.min_weight <= 1.0
            assert result.page >= 1
            assert 1 <= result.size <= 100
            assert result.segment_basis in {"label", "asset"}
