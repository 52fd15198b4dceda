"""The JSON Schemas of contract section 4c: valid draft 2020-12 schemas, shipped with the
package, and in agreement with what the product reads and writes: the input codec accepts
exactly the documents input.json accepts, and every input record `segments produce` writes
validates. (Change events and count values read from real topics: tests/integration/
test_schemas.py.)"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from streams.codec.input import parse_event
from streams.codec.json_schemas import SCHEMAS, schema, schema_bytes
from streams.domain.events import INT64_MAX, INT64_MIN
from streams.domain.exceptions import InvalidEvent
from streams.tools.produce import generate

ROOT = Path(__file__).resolve().parents[3]
INPUT = Draft202012Validator(schema("input"))
INPUT_RS = jsonschema_rs.Draft202012Validator(schema("input"))


def schema_accepts(raw: bytes) -> bool:
    """What a consumer of input.json concludes: strict JSON (orjson refuses NaN, Infinity,
    numbers beyond the double range, invalid UTF-8, lone surrogates), then the schema."""
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    document = json.loads(raw)  # (exact integers beyond 64 bits, unlike orjson)
    valid = INPUT.is_valid(document)
    assert INPUT_RS.is_valid(document) == valid, "jsonschema and jsonschema-rs disagree"
    return valid


def codec_accepts(raw: bytes) -> bool:
    try:
        parse_event(raw, -1)  # (a record without a timestamp: no bound on ts)
    except InvalidEvent:
        return False
    return True


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_each_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    document = schema(name)
    Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    # The repository's schemas/ is the shipped folder: one copy, nothing to keep in sync.
    assert (ROOT / "schemas" / f"{name}.json").read_bytes() == schema_bytes(name)


def test_the_package_data_ships_every_schema_file() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["streams.codec.schemas"]
    files = sorted(p.name for p in (ROOT / "streams/codec/schemas").iterdir())
    assert files == sorted(f"{name}.json" for name in SCHEMAS)
    for file in files:
        assert any(fnmatch.fnmatch(file, pattern) for pattern in patterns), file
    with pytest.raises(KeyError):
        schema_bytes("../pyproject")


# -- input.json against the codec (streams/codec/input.py) -----------------------------------

FIELDS = ("program_id", "user_id", "segment_basis", "basis_id", "name", "action_type", "weight",
          "in_history", "ts")
_CHARS = st.characters(codec="utf-8")  # astral characters too: lengths count code points
_WRONG = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-2, 2),
                   st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2),
                                                                        st.integers(), max_size=1))


def _sized(low: int, high: int) -> st.SearchStrategy[str]:
    """Strings of lengths around the bounds [low, high] (mostly), and any short one."""
    lengths = st.sampled_from(sorted({max(0, low - 1), low, high - 1, high, high + 1}))
    around = lengths.flatmap(lambda n: st.text(_CHARS, min_size=n, max_size=n))
    return st.one_of(around, around, st.text(_CHARS, max_size=8))


_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "program_id": st.one_of(_sized(1, 128), _WRONG),
    "user_id": st.one_of(_sized(1, 256), _WRONG),
    "segment_basis": st.one_of(st.sampled_from(["label", "asset", "labels", "Asset", ""]),
                               _WRONG),
    "basis_id": st.one_of(_sized(1, 256), _WRONG),
    "name": st.one_of(_sized(0, 512), _WRONG),
    "action_type": st.one_of(_sized(1, 64), _WRONG),
    "weight": st.one_of(st.none(), st.floats(0, 1), st.floats(allow_nan=False,
                                                                allow_infinity=False),
                        st.sampled_from([0, 1, -0.0, 2, -1]), _WRONG),
    "in_history": st.one_of(st.booleans(), _WRONG),
    # Integer ts only as JSON integers: the worker refuses `1.0` (input.json's description).
    "ts": st.one_of(st.none(), st.integers(INT64_MIN - 2, INT64_MAX + 2),
                    st.sampled_from([INT64_MIN, INT64_MAX, 0, -1]),
                    st.integers(-10**6, 10**6).map(lambda n: n + 0.5),
                    st.text(max_size=4), st.booleans(), st.lists(st.integers(), max_size=1)),
}
_EXTRA = st.dictionaries(st.text(max_size=6).filter(lambda k: k not in FIELDS),
                         st.one_of(st.none(), st.booleans(), st.integers(-10, 10),
                                   st.text(max_size=4), st.lists(st.integers(), max_size=2)),
                         max_size=3)
_VALID = st.fixed_dictionaries({
    "program_id": st.text(_CHARS, min_size=1, max_size=8),
    "user_id": st.text(_CHARS, min_size=1, max_size=8),
    "segment_basis": st.sampled_from(["label", "asset"]),
    "basis_id": st.text(_CHARS, min_size=1, max_size=8),
    "action_type": st.text(_CHARS, min_size=1, max_size=8),
    "weight": st.one_of(st.none(), st.floats(0, 1)),
    "in_history": st.booleans()},
    optional={"name": st.text(_CHARS, max_size=8), "ts": st.integers(0, 1 << 42)})


@st.composite
def _one_field_changed(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one field replaced by anything its strategy draws, or removed."""
    document: dict[str, Any] = draw(_VALID)
    field = draw(st.sampled_from(FIELDS))
    if draw(st.integers(0, 5)) == 0:
        document.pop(field, None)
    else:
        document[field] = draw(_VALUES[field])
    return document


_DOCUMENTS = st.one_of(
    _one_field_changed(), _one_field_changed(), _one_field_changed(), _one_field_changed(),
    st.builds(lambda fields, extra: {**extra, **fields},
              st.fixed_dictionaries({}, optional=_VALUES), _EXTRA),
    st.builds(lambda valid, extra: {**extra, **valid}, _VALID, _EXTRA),
    _WRONG, st.text(max_size=4),
)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(_DOCUMENTS, st.booleans())
def test_the_input_schema_accepts_exactly_what_the_codec_accepts(document: Any,
                                                                  ascii_only: bool) -> None:
    raw = json.dumps(document, ensure_ascii=ascii_only, allow_nan=False).encode()
    assert schema_accepts(raw) == codec_accepts(raw), raw[:300]


_BOUNDS = {"program_id": (1, 128), "user_id": (1, 256), "basis_id": (1, 256), "name": (0, 512),
           "action_type": (1, 64)}
_GOOD = {"program_id": "p", "user_id": "u", "segment_basis": "label", "basis_id": "b",
         "action_type": "view", "weight": 0.5, "in_history": True}


@pytest.mark.parametrize(("field", "value"), [
    *[(field, char * n) for field, (low, high) in _BOUNDS.items()
      for n in sorted({max(0, low - 1), low, high, high + 1}) for char in ("x", "\U0001F600")],
    *[("weight", w) for w in (0, 1, -0.0, 0.5, 1.0000001, -1e-9, 2, None, True, "0.5")],
    *[("ts", t) for t in (INT64_MIN - 1, INT64_MIN, -1, 0, INT64_MAX, INT64_MAX + 1, None, 1.5,
                          "1", False)],
    *[("segment_basis", b) for b in ("label", "asset", "labels", "LABEL", None)],
    *[("in_history", h) for h in (True, False, 0, 1, "true", None)],
    *[("name", n) for n in (None, 3)],
    *[(field, None) for field in ("program_id", "user_id", "basis_id", "action_type")],
])
def test_the_input_schema_and_the_codec_agree_at_every_bound(field: str, value: Any) -> None:
    raw = json.dumps({**_GOOD, field: value}, ensure_ascii=False).encode()
    assert schema_accepts(raw) == codec_accepts(raw)
    missing = json.dumps({k: v for k, v in _GOOD.items() if k != field}).encode()
    assert schema_accepts(missing) == codec_accepts(missing)


@pytest.mark.parametrize("raw", [
    b"", b"not json", b'{"weight": NaN}', b"\xff\xfe", b'{"program_id": "\\ud800"}',
    b'{"weight": 1e400}', b"null", b"[]",
])
def test_bytes_that_are_not_an_object_of_strict_json_are_refused_by_both(raw: bytes) -> None:
    assert not schema_accepts(raw)
    assert not codec_accepts(raw)


def test_every_record_segments_produce_writes_validates_and_its_invalid_ones_do_not() -> None:
    records = list(generate(20_000, seed=11, invalid_ratio=0.05, base_ts=1_000_000))
    valid = [r for r in records if r.valid]
    invalid = [r for r in records if not r.valid]
    assert len(valid) > 15_000 and len(invalid) > 500
    for record in valid:
        assert schema_accepts(record.value), record.value
    for record in invalid:  # every invalid kind it makes is one the schema describes
        assert not schema_accepts(record.value), record.value
