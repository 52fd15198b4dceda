"""The changelogs' records (codec/durable.py): decoded as encoded, and anything else refused."""

from __future__ import annotations

import pytest

from streams.codec.durable import (
    decode_emitted,
    decode_recommendation,
    emitted_key,
    encode_emitted,
    encode_recommendation,
    recommendation_key,
)
from streams.codec.exceptions import MalformedRecord

FAMILY = ("p1", "label", "l1", "view")
KEY = recommendation_key(FAMILY, "u1")
VALUE = encode_recommendation(0.5, True, 1, 1, 3, "n")
EMITTED_KEY = emitted_key((FAMILY, "growth", 0.5))


def test_recommendations_decode_as_encoded() -> None:
    k, v = decode_recommendation(KEY, encode_recommendation(0.25, True, 17, 4, 3, "Label one"), 3)
    assert (k.family, k.user_id) == (FAMILY, "u1")
    assert (v.weight, v.in_history, v.ts, v.offset, v.partition, v.name) == (
        0.25, True, 17, 4, 3, "Label one")


def test_emitted_counts_decode_as_encoded() -> None:
    assert decode_emitted(EMITTED_KEY, encode_emitted(5, 3), 3) == (
        (FAMILY, "growth", 0.5), 5, None)
    assert decode_emitted(EMITTED_KEY, encode_emitted(5, 3, 4), 3) == (
        (FAMILY, "growth", 0.5), 5, 4)
    assert encode_emitted(5, 3) == b"[5,3]" and encode_emitted(5, 3, 4) == b"[5,3,4]"


@pytest.mark.parametrize(("key", "value"), [
    (KEY, b"not json"),
    (KEY, b'[0.25,true,17,4,3]'),  # wrong arity
    (KEY, b'[0.25,true,17,4,3,"n",1]'),
    (KEY, b'[1.5,true,17,4,3,"n"]'),  # weight out of range
    (KEY, b'[-0.1,true,17,4,3,"n"]'),
    (KEY, b'["0.5",true,17,4,3,"n"]'),
    (KEY, b'[0.5,1,17,4,3,"n"]'),
    (KEY, b'[0.5,true,1.5,4,3,"n"]'),
    (KEY, b'[0.5,true,17,-4,3,"n"]'),
    (KEY, b'[0.5,true,17,4,2,"n"]'),  # a record of another partition
    (KEY, b'{"weight":0.5}'),
    (b'["p1","label","l1","view"]', VALUE),
    (b'["p1","labels","l1","view","u1"]', VALUE),
    (b'["","label","l1","view","u1"]', VALUE),
    (b"[" * 10_000, VALUE),
])
def test_malformed_recommendations_are_refused(key: bytes, value: bytes) -> None:
    with pytest.raises(MalformedRecord):
        decode_recommendation(key, value, 3)


@pytest.mark.parametrize(("key", "value"), [
    (EMITTED_KEY, v) for v in (b"", b"[]", b"[1]", b"[-1,3]", b"[1,2]", b"[1,3,2,4]",
                               b'["1",3]', b"[1.5,3]", b"null")] + [
    (b'["p1","label","l1","view","growth"]', b"[1,3]"),  # no threshold
    (b'["p1","label","l1","view","all",0.5]', b"[1,3]"),
    (b'["p1","label","l1","view","growth",1.5]', b"[1,3]"),
    (b"garbage", b"[1,3]"),
])
def test_malformed_emitted_counts_are_refused(key: bytes, value: bytes) -> None:
    with pytest.raises(MalformedRecord):
        decode_emitted(key, value, 3)
