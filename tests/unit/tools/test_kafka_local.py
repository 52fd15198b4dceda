"""The local broker's storage format gets a cluster id its tool accepts, every time."""

from __future__ import annotations

import base64

from streams.tools.kafka_local import _cluster_id


def test_cluster_ids_are_kafka_uuids_that_never_look_like_an_option() -> None:
    # One plain random UUID in 32 starts with "-" in URL-safe base64 (63 = "_" and 62 = "-"
    # of 64 symbols for the first 6 bits); 2,000 draws make that case all but certain.
    ids = [_cluster_id() for _ in range(2000)]
    assert not any(i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
    for i in ids[:50]:
        assert len(i) == 22
        assert len(base64.urlsafe_b64decode(i + "==")) == 16
